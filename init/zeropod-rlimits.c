// SPDX-License-Identifier: Apache-2.0
/*
 * libzeropod-rlimits.so: lets the toolbox's CRIU read another user's rlimits
 * on hosts where it lacks CAP_SYS_RESOURCE.
 *
 * CRIU reads each rlimit of a process it dumps with the prlimit64 system call
 * (through glibc's syscall(); its own limits through prlimit64()), the target
 * pid, and no new limit. The kernel allows that only to a caller with the
 * target's uids and gids, or with CAP_SYS_RESOURCE; some hosts drop
 * CAP_SYS_RESOURCE even for root, and then no app running as a non-root user
 * could be checkpointed.
 * The same values are in /proc/PID/limits, which anyone may read. This
 * library is preloaded into CRIU only (ld.so --preload, never through the
 * environment) and changes one case: a read-only query refused with EPERM is
 * answered from that file. Everything else is the plain system call.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* /proc/PID/limits: a header, then one line per resource in kernel order,
   "%-25s %-20s %-20s %-10s": the soft limit at column 26, the hard at 47. */
#define SOFT_COL 26
#define HARD_COL 47

static int parse_limit(const char *s, rlim64_t *out)
{
	char *end;

	if (!strncmp(s, "unlimited", 9) && (s[9] == ' ' || s[9] == '\n' || !s[9])) {
		*out = RLIM64_INFINITY;
		return 0;
	}
	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	*out = strtoull(s, &end, 10);
	if (errno || (*end != ' ' && *end != '\n' && *end))
		return -1;
	return 0;
}

static int limits_from_proc(pid_t pid, int resource, struct rlimit64 *old)
{
	char path[64], buf[4096], *line;
	ssize_t n, got = 0;
	int fd, i;

	snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (got < (ssize_t)sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		got += n;
	}
	close(fd);
	buf[got] = '\0';
	line = buf;
	for (i = 0; i <= resource; i++) { /* line 0 is the header */
		line = strchr(line, '\n');
		if (!line)
			return -1;
		line++;
	}
	if (strlen(line) <= HARD_COL || parse_limit(line + SOFT_COL, &old->rlim_cur) ||
	    parse_limit(line + HARD_COL, &old->rlim_max))
		return -1;
	return 0;
}

/* A read-only prlimit64 refused with EPERM, answered from /proc; else ret and errno as they were. */
static long fix_eperm(long ret, int err, pid_t pid, int resource, const void *new_limit, struct rlimit64 *old_limit)
{
	if (ret == 0 || err != EPERM || new_limit || !old_limit || pid <= 0 || resource < 0 ||
	    resource >= RLIM_NLIMITS || limits_from_proc(pid, resource, old_limit)) {
		errno = err;
		return ret;
	}
	return 0;
}

int prlimit64(__pid_t pid, __rlimit_resource_t resource, const struct rlimit64 *new_limit,
	      struct rlimit64 *old_limit)
{
	/* Through syscall() below, which does the work. */
	return (int)syscall(SYS_prlimit64, pid, resource, new_limit, old_limit);
}

typedef long (*syscall_fn)(long, ...);

long syscall(long number, ...)
{
	static syscall_fn next;
	long a[6], ret;
	va_list ap;

	/* glibc's syscall() reads six arguments whatever the call; so do we. */
	va_start(ap, number);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (!next)
		next = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
	if (!next) {
		errno = ENOSYS;
		return -1;
	}
	ret = next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
	if (number != SYS_prlimit64)
		return ret;
	return fix_eperm(ret, errno, (pid_t)a[0], (int)a[1], (const void *)a[2], (struct rlimit64 *)a[3]);
}
