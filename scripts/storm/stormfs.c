/*
 * stormfs: a read-only passthrough FUSE filesystem that charges a fixed latency per metadata
 * operation, to model a shared filesystem's metadata server (Lustre, GPFS, NFS) on one machine,
 * and optionally caps its read bandwidth, to model the servers' share of a busy cluster.
 *
 *     stormfs [-d DELAY_MS] [-q MAX_INFLIGHT] [-t TIMEOUT_S] [-b MB_PER_S] [-l READ_MS]
 *             [-s STATS_FILE] [-f]
 *             SOURCE MOUNTPOINT
 *
 * Design (written for imagenetfs's benchmark, scripts/bench.py; see notes/storm-sim.md):
 * - Low-level libfuse 3 API, so that every opcode the kernel sends is seen and counted as what
 *   it is (the high-level API folds LOOKUP into getattr). Nodes hold their path relative to
 *   SOURCE (no fd each: the kernel may remember more nodes than RLIMIT_NOFILE allows), keyed
 *   by (st_dev, st_ino); the FUSE node id is the node's address; FORGET frees them.
 * - Metadata operations (LOOKUP, GETATTR, OPENDIR, READDIR, OPEN, STATFS, READLINK) each take
 *   one of MAX_INFLIGHT service slots (a counting semaphore: the metadata server's queue), then
 *   sleep DELAY_MS (absolute clock_nanosleep, 1 ns timer slack), then do the real work.
 *   RELEASE, RELEASEDIR, FORGET and IOCTL are free. FLUSH, ACCESS and xattrs are not
 *   implemented (ENOSYS: the kernel stops asking), so they never reach the backing store.
 * - Data: READ is spliced from the backing fd. With -b MB_PER_S (MB = 10^6 bytes; default 0,
 *   no cap) the total READ bandwidth of the mount is capped: one link shared by every thread,
 *   a token bucket without burst. Each READ reserves bytes/RATE seconds of the link after the
 *   reservations before it (arrival order) and its reply is sent when its reservation ends, so
 *   any mix of readers gets RATE in total and a lone 128 KiB read on an idle link takes its
 *   transfer time (0.66 ms at 200 MB/s). The bytes are those really returned (the request's
 *   size cut at end of file). READ takes no metadata slot and no DELAY_MS. With -l READ_MS
 *   (default 0) each READ's reply also waits READ_MS after its transfer -- a round trip to
 *   the servers, as every RPC of a Lustre or NFS client pays -- without holding the link:
 *   READs in flight wait theirs side by side.
 * - Client page cache, and what the cap therefore means: OPEN replies with keep_cache (and
 *   libfuse's default auto_inval_data, which only drops pages when a file's size or mtime
 *   changes: never here), no direct_io. So the kernel keeps the pages of a stormfs file across
 *   opens and openers until memory pressure or `echo 3 > /proc/sys/vm/drop_caches`, as a
 *   Lustre client keeps the pages it holds a lock for (NFS: until close-to-open finds a
 *   change). The model: the FIRST read of each byte on this node goes to the "server" at the
 *   capped rate; a repeated read of bytes still cached is local and free, whoever reads them
 *   (a copy in the background and a daemon reading the same image share one client cache).
 *   Kernel readahead is charged like any read: it is what the client fetched. A benchmark that
 *   compares contenders must drop caches between them so that each starts cold.
 * - Entry and attribute timeouts are TIMEOUT_S (default 1 s): the kernel's own cache, like an
 *   NFS client's attribute cache. With timeout 0 every read of a big file re-validates its
 *   attributes, which a real client does not do.
 * - Plain READDIR with entry types (no READDIRPLUS): os.walk needs no stat per entry.
 * - Counters: one per opcode, atomics, and the bytes READ returned. SIGUSR1 (and the end of
 *   the run) writes them to STATS_FILE as one JSON object {"seq": N, "delay_ms": x,
 *   "delayed_s": x, "read_mbps": x, "read_bytes": N, "read_wait_s": x, "ops": {"LOOKUP": n,
 *   ...}}, written to a temporary name and renamed; "seq" grows with each write so a reader
 *   can wait for a fresh one.
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <search.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

enum op {
	OP_LOOKUP, OP_GETATTR, OP_OPENDIR, OP_READDIR, OP_OPEN, OP_STATFS, OP_READLINK,
	OP_READ, OP_RELEASE, OP_RELEASEDIR, OP_FORGET, OP_IOCTL, OP_COUNT
};
static const char *op_names[OP_COUNT] = {
	"LOOKUP", "GETATTR", "OPENDIR", "READDIR", "OPEN", "STATFS", "READLINK",
	"READ", "RELEASE", "RELEASEDIR", "FORGET", "IOCTL",
};
static atomic_ullong counts[OP_COUNT];
static atomic_ullong delayed_ns;  /* total time spent queued + sleeping */
static atomic_ullong read_bytes;  /* bytes returned by READ */
static atomic_ullong read_wait_ns;  /* total time READ replies waited for the link */

static double read_bytes_per_s;  /* -b, in bytes/s; 0: no cap */
static uint64_t read_latency_ns; /* -l, per READ */
static pthread_mutex_t link_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t link_free_ns;  /* when the link has sent every reservation made so far */

static long delay_ns = 500000;
static double timeout_s = 1.0;
static sem_t slots;
static const char *stats_path;
static unsigned long long stats_seq;

struct node {
	dev_t dev;
	ino_t ino;
	char *path;          /* relative to SOURCE; "." for the root */
	uint64_t nlookup;
};

static struct node root;
static int source_fd;  /* O_PATH, the SOURCE directory */
static void *nodes;      /* tsearch tree of struct node *, by (dev, ino) */
static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;

static int node_cmp(const void *a, const void *b)
{
	const struct node *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	return 0;
}

static struct node *node_of(fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &root : (struct node *)(uintptr_t)ino;
}

static fuse_ino_t id_of(struct node *n)
{
	return n == &root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* One metadata operation: count it, wait for a service slot, then the fixed latency. */
static void metadata(enum op op)
{
	atomic_fetch_add(&counts[op], 1);
	if (delay_ns <= 0)
		return;
	uint64_t start = now_ns();
	while (sem_wait(&slots) != 0 && errno == EINTR)
		;
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += delay_ns;
	while (until.tv_nsec >= 1000000000) {
		until.tv_nsec -= 1000000000;
		until.tv_sec++;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
		;
	sem_post(&slots);
	atomic_fetch_add(&delayed_ns, now_ns() - start);
}

static void free_op(enum op op)
{
	atomic_fetch_add(&counts[op], 1);
}

static void sleep_until(uint64_t ns)
{
	struct timespec until = {.tv_sec = ns / 1000000000u, .tv_nsec = ns % 1000000000u};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
		;
}

/* One READ of `bytes`: count them, then wait until the shared link has carried them. */
static void bandwidth(size_t bytes)
{
	atomic_fetch_add(&read_bytes, bytes);
	if (read_bytes_per_s <= 0 || bytes == 0) {
		if (read_latency_ns)
			sleep_until(now_ns() + read_latency_ns);
		return;
	}
	uint64_t cost = (uint64_t)(bytes * 1e9 / read_bytes_per_s);
	pthread_mutex_lock(&link_lock);
	uint64_t start = now_ns();
	uint64_t done = (link_free_ns > start ? link_free_ns : start) + cost;
	link_free_ns = done;
	pthread_mutex_unlock(&link_lock);
	sleep_until(done + read_latency_ns);
	atomic_fetch_add(&read_wait_ns, now_ns() - start);
}

static void write_stats(void)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", stats_path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f, "{\"seq\": %llu, \"delay_ms\": %.3f, \"delayed_s\": %.6f, "
		"\"read_mbps\": %.3f, \"read_bytes\": %llu, \"read_wait_s\": %.6f, \"ops\": {",
		++stats_seq, delay_ns / 1e6, atomic_load(&delayed_ns) / 1e9,
		read_bytes_per_s / 1e6, atomic_load(&read_bytes), atomic_load(&read_wait_ns) / 1e9);
	for (int i = 0; i < OP_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", op_names[i], atomic_load(&counts[i]));
	fprintf(f, "}}\n");
	fclose(f);
	rename(tmp, stats_path);
}

static void *stats_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;
	for (;;)
		if (sigwait(set, &sig) == 0 && sig == SIGUSR1 && stats_path)
			write_stats();
	return NULL;
}

/* --- operations ------------------------------------------------------------------------- */

static struct fuse_entry_param entry_of(struct node *n, const struct stat *st)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	e.ino = id_of(n);
	e.attr = *st;
	e.attr_timeout = timeout_s;
	e.entry_timeout = timeout_s;
	return e;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	metadata(OP_LOOKUP);
	struct node *p = node_of(parent);
	char *path;
	if (p == &root)
		path = strdup(name);
	else if (asprintf(&path, "%s/%s", p->path, name) < 0)
		path = NULL;
	if (!path) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct stat st;
	if (fstatat(source_fd, path, &st, AT_SYMLINK_NOFOLLOW) != 0) {
		free(path);
		if (errno == ENOENT) {  /* negative entry, cached like a positive one */
			struct fuse_entry_param e;
			memset(&e, 0, sizeof e);
			e.entry_timeout = timeout_s;
			fuse_reply_entry(req, &e);
			return;
		}
		fuse_reply_err(req, errno);
		return;
	}
	struct node key = {.dev = st.st_dev, .ino = st.st_ino};
	struct node *n;
	pthread_mutex_lock(&nodes_lock);
	void **found = tfind(&key, &nodes, node_cmp);
	if (found) {
		n = *found;
		n->nlookup++;
		free(path);
	} else {
		n = calloc(1, sizeof *n);
		n->dev = st.st_dev;
		n->ino = st.st_ino;
		n->path = path;
		n->nlookup = 1;
		tsearch(n, &nodes, node_cmp);
	}
	pthread_mutex_unlock(&nodes_lock);
	struct fuse_entry_param e = entry_of(n, &st);
	fuse_reply_entry(req, &e);
}

static void forget_one(fuse_ino_t ino, uint64_t nlookup)
{
	struct node *n = node_of(ino);
	if (n == &root)
		return;
	pthread_mutex_lock(&nodes_lock);
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	if (n->nlookup == 0) {
		tdelete(n, &nodes, node_cmp);
		free(n->path);
		free(n);
	}
	pthread_mutex_unlock(&nodes_lock);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	free_op(OP_FORGET);
	forget_one(ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	free_op(OP_FORGET);
	for (size_t i = 0; i < count; i++)
		forget_one(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	metadata(OP_GETATTR);
	struct stat st;
	if (fstatat(source_fd, node_of(ino)->path, &st, AT_SYMLINK_NOFOLLOW) != 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, timeout_s);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	metadata(OP_READLINK);
	char buf[4096];
	ssize_t len = readlinkat(source_fd, node_of(ino)->path, buf, sizeof buf - 1);
	if (len < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	buf[len] = 0;
	fuse_reply_readlink(req, buf);
}

static int reopen(struct node *n, int flags)
{
	return openat(source_fd, n->path, flags | O_NOFOLLOW | O_CLOEXEC);
}

struct dir {
	DIR *dp;
	off_t offset;
	struct dirent *entry;  /* read but not yet sent */
};

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	metadata(OP_OPENDIR);
	int fd = reopen(node_of(ino), O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	struct dir *d = calloc(1, sizeof *d);
	d->dp = fdopendir(fd);
	fi->fh = (uintptr_t)d;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)ino;
	metadata(OP_READDIR);
	struct dir *d = (struct dir *)(uintptr_t)fi->fh;
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->offset = off;
		d->entry = NULL;
	}
	char *buf = malloc(size);
	size_t used = 0;
	for (;;) {
		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry)
				break;
		}
		struct stat st = {.st_ino = d->entry->d_ino, .st_mode = DTTOIF(d->entry->d_type)};
		off_t next = d->entry->d_off;
		size_t len = fuse_add_direntry(req, buf + used, size - used, d->entry->d_name,
					       &st, next);
		if (len > size - used)
			break;
		used += len;
		d->entry = NULL;
		d->offset = next;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	free_op(OP_RELEASEDIR);
	struct dir *d = (struct dir *)(uintptr_t)fi->fh;
	closedir(d->dp);
	free(d);
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	metadata(OP_OPEN);
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	int fd = reopen(node_of(ino), fi->flags & ~(O_CREAT | O_TRUNC));
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fi->fh = fd;
	fi->keep_cache = 1;  /* pages stay cached across opens: see the header */
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)ino;
	free_op(OP_READ);
	struct stat st;
	if (fstat(fi->fh, &st) != 0) {
		fuse_reply_err(req, errno);
		return;
	}
	size_t bytes = off >= st.st_size ? 0 : (size_t)(st.st_size - off);
	bandwidth(bytes < size ? bytes : size);
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	free_op(OP_RELEASE);
	close(fi->fh);
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	metadata(OP_STATFS);
	struct statvfs sv;
	(void)ino;
	if (fstatvfs(source_fd, &sv) != 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static void op_ioctl(fuse_req_t req, fuse_ino_t ino, int cmd, void *arg,
		     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
		     size_t in_bufsz, size_t out_bufsz)
{
	(void)ino; (void)cmd; (void)arg; (void)fi; (void)flags; (void)in_buf;
	(void)in_bufsz; (void)out_bufsz;
	free_op(OP_IOCTL);  /* Python's open() asks isatty(): answered locally, like NFS does */
	fuse_reply_err(req, ENOTTY);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->want &= ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.statfs = op_statfs,
	.ioctl = op_ioctl,
};

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [-d DELAY_MS] [-q MAX_INFLIGHT] [-t TIMEOUT_S] [-b MB_PER_S] [-l READ_MS] "
		"[-s STATS_FILE] [-f] SOURCE MOUNTPOINT\n", argv0);
	exit(2);
}

int main(int argc, char *argv[])
{
	int inflight = 4, foreground = 0, opt;
	while ((opt = getopt(argc, argv, "d:q:t:b:l:s:f")) != -1) {
		switch (opt) {
		case 'd': delay_ns = (long)(atof(optarg) * 1e6); break;
		case 'q': inflight = atoi(optarg); break;
		case 't': timeout_s = atof(optarg); break;
		case 'b': read_bytes_per_s = atof(optarg) * 1e6; break;
		case 'l': read_latency_ns = (uint64_t)(atof(optarg) * 1e6); break;
		case 's': stats_path = optarg; break;
		case 'f': foreground = 1; break;
		default: usage(argv[0]);
		}
	}
	if (argc - optind != 2 || inflight < 1 || read_bytes_per_s < 0)
		usage(argv[0]);
	const char *source = argv[optind], *mountpoint = argv[optind + 1];

	struct stat st;
	source_fd = open(source, O_PATH | O_DIRECTORY | O_CLOEXEC);
	root.path = ".";
	if (source_fd < 0 || fstat(source_fd, &st) != 0) {
		perror(source);
		return 1;
	}
	root.dev = st.st_dev;
	root.ino = st.st_ino;
	root.nlookup = 1;
	sem_init(&slots, 0, inflight);
	prctl(PR_SET_TIMERSLACK, 1UL);  /* inherited by libfuse's worker threads */

	/* SIGUSR1 is taken by one thread with sigwait; every other thread blocks it. */
	static sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);

	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	fuse_opt_add_arg(&args, argv[0]);
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, "ro,default_permissions,fsname=stormfs,subtype=stormfs");
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
	if (!se)
		return 1;
	if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, mountpoint) != 0)
		return 1;
	fuse_daemonize(foreground);
	pthread_t thread;
	pthread_create(&thread, NULL, stats_thread, &usr1);

	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, 64);
	fuse_loop_cfg_set_idle_threads(cfg, 16);
	int ret = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);

	if (stats_path)
		write_stats();
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	return ret ? 1 : 0;
}
