/* Injects I/O errors into a process from outside it (LD_PRELOAD): the Nth call of one kind
 * (fsync: fsync and fdatasync; write: the write family) on a file whose path contains
 * DICOMVAULT_FAULT_PATH fails with EIO, DICOMVAULT_FAULT_TIMES times (default once), as a
 * failing disk would. Nothing in the archive's own code knows about it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long seen;

static int inject(const char *kind, int fd) {
    const char *want_kind = getenv("DICOMVAULT_FAULT_CALL");
    const char *want_path = getenv("DICOMVAULT_FAULT_PATH");
    if (!want_kind || !want_path || strcmp(want_kind, kind) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (!strstr(path, want_path)) return 0;
    long after = atol(getenv("DICOMVAULT_FAULT_AFTER") ? getenv("DICOMVAULT_FAULT_AFTER") : "0");
    long times = atol(getenv("DICOMVAULT_FAULT_TIMES") ? getenv("DICOMVAULT_FAULT_TIMES") : "1");
    long call = atomic_fetch_add(&seen, 1);
    if (call < after || call >= after + times) return 0;
    fprintf(stderr, "eio.c: failing %s #%ld on %s\n", kind, call, path);
    errno = EIO;
    return 1;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

int fsync(int fd) { return inject("fsync", fd) ? -1 : REAL(fsync)(fd); }
int fdatasync(int fd) { return inject("fsync", fd) ? -1 : REAL(fdatasync)(fd); }
ssize_t write(int fd, const void *buf, size_t n) {
    return inject("write", fd) ? -1 : REAL(write)(fd, buf, n);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    return inject("write", fd) ? -1 : REAL(pwrite)(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    return inject("write", fd) ? -1 : REAL(pwrite64)(fd, buf, n, off);
}
ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t off) {
    return inject("write", fd) ? -1 : REAL(pwritev)(fd, iov, count, off);
}
ssize_t writev(int fd, const struct iovec *iov, int count) {
    return inject("write", fd) ? -1 : REAL(writev)(fd, iov, count);
}
