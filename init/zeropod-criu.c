// SPDX-License-Identifier: Apache-2.0
/*
 * zeropod-criu: run the toolbox's CRIU inside a container, on behalf of the agent.
 *
 *   zeropod-criu --target PID [--cgroup FILE]... [--private-run] [--kdat-in FD]
 *                [--kdat-out FD] [--go-fd FD] -- CRIU-ARGV...
 *
 * It does what `nsenter -t PID -p -m -n -i -u -r` plus a cgroup join would do,
 * and two things nsenter cannot:
 *
 *  --private-run  gives CRIU a private copy of the container's mount namespace
 *                 with a tmpfs on /run, so that CRIU's kernel-feature cache
 *                 (/run/criu.kdat) can be used: it must be on tmpfs, and it must
 *                 never be a file the container can write. --kdat-in FD seeds
 *                 it from the agent's copy; --kdat-out FD hands a freshly
 *                 computed one back. The restore argv then carries
 *                 --join-ns mnt:/proc/1/ns/mnt, so the restored app lands in
 *                 the container's own mount namespace, not in this copy.
 *  --go-fd FD     makes it a warm restorer: everything above is done ahead of
 *                 time, and CRIU is started the moment one byte arrives on FD
 *                 (EOF without a byte: give up, exit 0).
 *
 * It exits with CRIU's exit status (or 128+signal).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CGROUPS 32

static _Noreturn void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "zeropod-criu: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (errno)
		fprintf(stderr, ": %s", strerror(errno));
	fputc('\n', stderr);
	exit(125);
}

static int int_arg(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 1 << 30) {
		errno = 0;
		die("bad %s '%s'", what, s);
	}
	return (int)v;
}

static int open_ns(int pid, const char *ns)
{
	char path[64];
	int fd;

	snprintf(path, sizeof path, "/proc/%d/ns/%s", pid, ns);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s", path);
	return fd;
}

static void join_cgroup(const char *file)
{
	int fd = open(file, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "0", 1) != 1)
		die("join %s", file);
	close(fd);
}

static void copy_fd(int from, int to, const char *what)
{
	char buf[8192];
	ssize_t n;

	while ((n = read(from, buf, sizeof buf)) > 0)
		if (write(to, buf, n) != n)
			die("write %s", what);
	if (n < 0)
		die("read %s", what);
}

/* The private /run with the kdat cache; errors here only cost speed, but a
   half-made /run could mislead CRIU, so they are fatal. */
static void private_run(int kdat_in)
{
	int fd;

	if (unshare(CLONE_NEWNS) < 0)
		die("unshare mount namespace");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make mounts private");
	if (mount("zeropod-criu", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=256k,mode=0700") < 0)
		die("mount tmpfs on /run");
	if (kdat_in < 0)
		return;
	fd = open("/run/criu.kdat", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die("create /run/criu.kdat");
	copy_fd(kdat_in, fd, "kdat");
	close(fd);
	close(kdat_in);
}

/* Wait for a child; its exit status, or 128+signal. */
static int wait_exit(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_criu(char **argv)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid == 0) {
		/* A CRIU the agent gave up on (a timeout) must not go on behind its back. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(argv[0], argv);
		die("exec %s", argv[0]);
	}
	return wait_exit(pid);
}

int main(int argc, char **argv)
{
	const char *cgroups[MAX_CGROUPS];
	int ncg = 0, target = -1, kdat_in = -1, kdat_out = -1, go_fd = -1, privrun = 0;
	int i, root, ns[5], status;
	static const char *names[5] = {"net", "ipc", "uts", "pid", "mnt"};
	pid_t child;

	for (i = 1; i < argc && strcmp(argv[i], "--"); i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--target"))
			target = int_arg(argv[++i], "pid");
		else if (i + 1 < argc && !strcmp(argv[i], "--cgroup") && ncg < MAX_CGROUPS)
			cgroups[ncg++] = argv[++i];
		else if (i + 1 < argc && !strcmp(argv[i], "--kdat-in"))
			kdat_in = int_arg(argv[++i], "fd");
		else if (i + 1 < argc && !strcmp(argv[i], "--kdat-out"))
			kdat_out = int_arg(argv[++i], "fd");
		else if (i + 1 < argc && !strcmp(argv[i], "--go-fd"))
			go_fd = int_arg(argv[++i], "fd");
		else if (!strcmp(argv[i], "--private-run"))
			privrun = 1;
		else
			die("unknown argument '%s'", argv[i]);
	}
	if (target <= 0 || i + 1 >= argc)
		die("usage: zeropod-criu --target PID [--cgroup FILE]... [--private-run] "
		    "[--kdat-in FD] [--kdat-out FD] [--go-fd FD] -- CRIU-ARGV...");

	for (int n = 0; n < 5; n++)
		ns[n] = open_ns(target, names[n]);
	{
		char path[64];

		snprintf(path, sizeof path, "/proc/%d/root", target);
		root = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (root < 0)
			die("open %s", path);
	}
	for (int c = 0; c < ncg; c++)
		join_cgroup(cgroups[c]);
	for (int n = 0; n < 5; n++)
		if (setns(ns[n], 0) < 0)
			die("setns %s", names[n]);
	if (fchdir(root) < 0 || chroot(".") < 0 || chdir("/") < 0)
		die("enter the container's root");

	/* The pid namespace applies to children only. */
	child = fork();
	if (child < 0)
		die("fork");
	if (child > 0)
		return wait_exit(child);
	/* If the agent gives up on us, do not leave a CRIU running behind its back. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (privrun)
		private_run(kdat_in);
	if (go_fd >= 0) {
		char go;
		ssize_t n;

		do
			n = read(go_fd, &go, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			return 0;
		close(go_fd);
	}
	status = run_criu(argv + i + 1);
	if (kdat_out >= 0) {
		int fd = open("/run/criu.kdat", O_RDONLY | O_CLOEXEC);

		if (fd >= 0) {
			copy_fd(fd, kdat_out, "kdat");
			close(fd);
		}
	}
	return status;
}
