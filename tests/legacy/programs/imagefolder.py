"""torchvision's ImageFolder, step by step, without torchvision: classes from `os.scandir`,
samples from `os.walk` per class (sorted), labels by sorted class index, `pil_loader` on each.

    python imagefolder.py ROOT SPLIT

Prints the class list, then one line per sample: path (relative to ROOT), label, image size
and the MD5 of its RGB pixels.
"""

import hashlib
import os
import sys

from PIL import Image

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(directory: str) -> tuple[list[str], dict[str, int]]:
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes, {name: i for i, name in enumerate(classes)}


def make_dataset(directory: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    instances = []
    for target_class in sorted(class_to_idx):
        class_index = class_to_idx[target_class]
        target_dir = os.path.join(directory, target_class)
        if not os.path.isdir(target_dir):
            continue
        for root, _, fnames in sorted(os.walk(target_dir, followlinks=True)):
            for fname in sorted(fnames):
                path = os.path.join(root, fname)
                if path.lower().endswith(IMG_EXTENSIONS):
                    instances.append((path, class_index))
    return instances


def pil_loader(path: str) -> Image.Image:
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def main() -> None:
    root, split = sys.argv[1], sys.argv[2]
    directory = os.path.join(root, split)
    classes, class_to_idx = find_classes(directory)
    samples = make_dataset(directory, class_to_idx)
    print("classes", *classes)
    for path, label in samples:
        image = pil_loader(path)
        digest = hashlib.md5(image.tobytes()).hexdigest()
        print(os.path.relpath(path, root), label, *image.size, digest)


if __name__ == "__main__":
    main()
