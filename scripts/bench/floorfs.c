/*
 * floorfs: the least a FUSE filesystem can do to serve a read-only tree, to measure what this
 * kernel charges any FUSE filesystem per file -- the floor under imagenetfs's epochs.
 *
 *     floorfs [-t THREADS] [-f] DATA MANIFEST MOUNTPOINT
 *
 * DATA is one file holding every file's bytes, one after the other; MANIFEST lists the files
 * in that order, one `<relative path>\t<size>` a line (scripts/bench/floor.py writes both from
 * a directory). The tree -- its directories are the paths' parents -- is built in memory at
 * start; then every request is a table lookup, and nothing else happens in user space.
 *
 * It makes imagenetfs's protocol choices, so that the difference between the two is
 * imagenetfs's own work:
 * - OPEN and OPENDIR answered ENOSYS: the kernel then opens files and directories itself and
 *   keeps file pages across opens (imagenetfs's workers do the same);
 * - entries and attributes valid for a year (imagenetfs's `ops.TIMEOUT`);
 * - plain READDIR with entry types, no READDIRPLUS, parallel directory operations;
 * - READ replied from DATA by splicing (libfuse's splice write: no byte copied in user space),
 *   as imagenetfs's workers splice bytes stored as they are read;
 * - IOCTL (Python's `isatty` on open) answered ENOTTY, as imagenetfs answers it;
 * - THREADS (default 2) serving threads, started once and kept (imagenetfs: one worker process
 *   per core, 2 on a 2-core machine, each on its own clone of the session; here they share the
 *   session's descriptor, as libfuse's public API has no per-thread clone without its own
 *   thread pool, whose churn is not a floor: see serve()).
 * Files are 0444, directories 0555, owned by the mounting user, mtime 0.
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <search.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIMEOUT (365.0 * 86400)

struct node {
    fuse_ino_t parent;
    char *name;
    int is_dir;
    uint64_t size;    /* files: bytes; directories: number of children */
    uint64_t offset;  /* files: where their bytes start in DATA */
    fuse_ino_t *children;  /* directories: inode numbers, sorted by name */
    uint64_t nchildren, capacity;
};

static struct node *nodes;  /* nodes[ino - 1]; ino 1 is the root */
static uint64_t nnodes, nodes_capacity;
static int data_fd = -1;
static uid_t uid;
static gid_t gid;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static fuse_ino_t add_node(fuse_ino_t parent, const char *name, int is_dir, uint64_t size,
                           uint64_t offset) {
    if (nnodes == nodes_capacity) {
        nodes_capacity = nodes_capacity ? 2 * nodes_capacity : 1024;
        nodes = realloc(nodes, nodes_capacity * sizeof *nodes);
        if (!nodes) die("realloc");
    }
    struct node *n = &nodes[nnodes++];
    memset(n, 0, sizeof *n);
    n->parent = parent;
    n->name = strdup(name);
    n->is_dir = is_dir;
    n->size = size;
    n->offset = offset;
    fuse_ino_t ino = nnodes;
    if (parent) {
        struct node *p = &nodes[parent - 1];
        if (p->nchildren == p->capacity) {
            p->capacity = p->capacity ? 2 * p->capacity : 8;
            p->children = realloc(p->children, p->capacity * sizeof *p->children);
            if (!p->children) die("realloc");
        }
        p->children[p->nchildren++] = ino;
    }
    return ino;
}

/* The directory `path` (relative, no trailing slash), made with its parents if missing. */
static fuse_ino_t directory(const char *path) {
    if (!*path) return 1;
    ENTRY key = {.key = (char *)path}, *found = hsearch(key, FIND);
    if (found) return (fuse_ino_t)(uintptr_t)found->data;
    char *copy = strdup(path), *slash = strrchr(copy, '/');
    fuse_ino_t parent;
    const char *name;
    if (slash) {
        *slash = '\0';
        parent = directory(copy);
        name = slash + 1;
    } else {
        parent = 1;
        name = copy;
    }
    fuse_ino_t ino = add_node(parent, name, 1, 0, 0);
    free(copy);
    key.key = strdup(path);
    key.data = (void *)(uintptr_t)ino;
    if (!hsearch(key, ENTER)) die("hsearch");
    return ino;
}

static int by_name(const void *a, const void *b) {
    return strcmp(nodes[*(const fuse_ino_t *)a - 1].name, nodes[*(const fuse_ino_t *)b - 1].name);
}

static void load(const char *manifest) {
    FILE *f = fopen(manifest, "r");
    if (!f) die(manifest);
    if (!hcreate(1 << 20)) die("hcreate");
    add_node(0, "", 1, 0, 0);
    char *line = NULL;
    size_t cap = 0;
    uint64_t offset = 0;
    while (getline(&line, &cap, f) > 0) {
        char *tab = strrchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        uint64_t size = strtoull(tab + 1, NULL, 10);
        char *slash = strrchr(line, '/');
        fuse_ino_t parent = 1;
        const char *name = line;
        if (slash) {
            *slash = '\0';
            parent = directory(line);
            name = slash + 1;
        }
        add_node(parent, name, 0, size, offset);
        offset += size;
    }
    free(line);
    fclose(f);
    for (uint64_t i = 0; i < nnodes; i++) {
        struct node *n = &nodes[i];
        if (!n->is_dir) continue;
        qsort(n->children, n->nchildren, sizeof *n->children, by_name);
        n->size = n->nchildren;
    }
}

static void attributes(fuse_ino_t ino, struct stat *st) {
    const struct node *n = &nodes[ino - 1];
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = uid;
    st->st_gid = gid;
    if (n->is_dir) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        for (uint64_t i = 0; i < n->nchildren; i++)
            st->st_nlink += nodes[n->children[i] - 1].is_dir;
    } else {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)n->size;
        st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
    }
    st->st_blksize = 4096;
}

static void ff_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    const struct node *p = &nodes[parent - 1];
    size_t lo = 0, hi = p->nchildren;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(nodes[p->children[mid] - 1].name, name);
        if (c == 0) {
            struct fuse_entry_param e = {.ino = p->children[mid],
                                         .attr_timeout = TIMEOUT,
                                         .entry_timeout = TIMEOUT};
            attributes(e.ino, &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    fuse_reply_err(req, ENOENT);
}

static void ff_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    struct stat st;
    attributes(ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT);
}

static void ff_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, ENOSYS);
}

static void ff_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
    (void)fi;
    const struct node *n = &nodes[ino - 1];
    char *buf = malloc(size);
    size_t used = 0;
    for (uint64_t i = (uint64_t)off; i < n->nchildren + 2; i++) {
        struct stat st = {0};
        const char *name;
        if (i < 2) {
            name = i == 0 ? "." : "..";
            st.st_ino = i == 0 ? ino : (n->parent ? n->parent : ino);
            st.st_mode = S_IFDIR;
        } else {
            const struct node *c = &nodes[n->children[i - 2] - 1];
            name = c->name;
            st.st_ino = n->children[i - 2];
            st.st_mode = c->is_dir ? S_IFDIR : S_IFREG;
        }
        size_t want = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)i + 1);
        if (want > size - used) break;
        used += want;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void ff_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)fi;
    const struct node *n = &nodes[ino - 1];
    if ((uint64_t)off >= n->size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if ((uint64_t)off + size > n->size) size = n->size - (uint64_t)off;
    struct fuse_bufvec data = FUSE_BUFVEC_INIT(size);
    data.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    data.buf[0].fd = data_fd;
    data.buf[0].pos = (off_t)(n->offset + (uint64_t)off);
    fuse_reply_data(req, &data, FUSE_BUF_SPLICE_NONBLOCK);
}

static void ff_ioctl(fuse_req_t req, fuse_ino_t ino, int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
                     size_t in_bufsz, size_t out_bufsz) {
    (void)ino, (void)cmd, (void)arg, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz;
    (void)out_bufsz;
    fuse_reply_err(req, ENOTTY);
}

static void ff_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS;
    conn->want |= conn->capable & (FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_SPLICE_WRITE |
                                   FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_NO_OPENDIR_SUPPORT);
}

/* One serving thread: take a request, answer it, until the session ends (the unmount makes
 * every blocked read fail with ENODEV). THREADS of them, started once and kept, all reading
 * the session's descriptor: libfuse's own multi-threaded loop (fuse_session_loop_mt) starts a
 * thread whenever all are busy and ends it when more than max_idle_threads wait -- under 8
 * readers that was a clone3, an open of /dev/fuse, a pipe and their undoing per ~1 file,
 * most of its system time: no floor. */
static void *serve(void *arg) {
    struct fuse_session *se = arg;
    struct fuse_buf buf = {.mem = NULL};
    while (!fuse_session_exited(se)) {
        int res = fuse_session_receive_buf(se, &buf);
        if (res == -EINTR) continue;
        if (res <= 0) {
            fuse_session_exit(se);
            break;
        }
        fuse_session_process_buf(se, &buf);
    }
    free(buf.mem);
    return NULL;
}

static const struct fuse_lowlevel_ops ops = {
    .init = ff_init,
    .lookup = ff_lookup,
    .getattr = ff_getattr,
    .open = ff_open,
    .opendir = ff_open,
    .readdir = ff_readdir,
    .read = ff_read,
    .ioctl = ff_ioctl,
};

int main(int argc, char **argv) {
    unsigned threads = 2;
    int foreground = 0, opt;
    while ((opt = getopt(argc, argv, "t:f")) != -1) {
        if (opt == 't') threads = (unsigned)atoi(optarg);
        else if (opt == 'f') foreground = 1;
        else return 2;
    }
    if (argc - optind != 3) {
        fprintf(stderr, "usage: floorfs [-t THREADS] [-f] DATA MANIFEST MOUNTPOINT\n");
        return 2;
    }
    const char *data = argv[optind], *manifest = argv[optind + 1], *mountpoint = argv[optind + 2];
    uid = getuid();
    gid = getgid();
    data_fd = open(data, O_RDONLY | O_CLOEXEC);
    if (data_fd < 0) die(data);
    load(manifest);

    char *fargv[] = {argv[0], "-o", "ro,fsname=floorfs,subtype=floorfs,default_permissions", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se) return 1;
    if (fuse_set_signal_handlers(se) != 0) return 1;
    if (fuse_session_mount(se, mountpoint) != 0) return 1;
    fuse_daemonize(foreground);
    if (threads < 1) threads = 1;
    pthread_t *ids = calloc(threads, sizeof *ids);
    if (!ids) die("calloc");
    for (unsigned i = 1; i < threads; i++)
        if (pthread_create(&ids[i], NULL, serve, se) != 0) die("pthread_create");
    serve(se);
    for (unsigned i = 1; i < threads; i++) pthread_join(ids[i], NULL);
    free(ids);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return 0;
}
