// SPDX-License-Identifier: Apache-2.0
/*
 * zeropod-init: the keeper, PID 1 of every container nri-zeropod manages.
 *
 *   zeropod-init [--state-dir DIR] [--activator] [--stop-signal SIG] -- CMD [ARGS...]
 *
 * A plain init in the catatonit/tini mould: it runs CMD (the app) as its child
 * in a session of its own, forwards signals to the app's process group, reaps
 * every child and exits with the app's status (exit code, or 128+signal).
 *
 * What it adds: while the agent on the host checkpoints the app with CRIU, the
 * app's death is expected, and the keeper stays alive so the container stays
 * RUNNING with no app in it. The agent says so through DIR/state, one word
 * (running, checkpointing, scaled-down, restoring) in a directory that is
 * read-only inside the container. Never through a signal: the app can signal
 * PID 1, and every catchable signal belongs to the app.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define USAGE "usage: zeropod-init [--state-dir DIR] [--activator] [--stop-signal SIG] -- CMD [ARGS...]"
/* Signal numbers as containerd and Go name them (SIGRTMIN is 34 there). */
#define RTMIN 34
#define RTMAX 64

static pid_t app = -1;       /* CRIU restores the app with this same pid */
static bool app_alive;       /* forked (or seen back after a restore), not reaped since */
static int app_status = -1;  /* its last exit status as an exit code; -1: none seen */
static bool died_running;    /* it died while the state allowed no absence */
static int stop_sig;         /* the --stop-signal, 0 if none */
static int stop_requested;   /* a stop signal we received, 0 if none */
static char state_file[4096];
static char last_state[32];

static void vsay(const char *fmt, va_list ap)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "zeropod-init: ");

	vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
	n = (int)strlen(buf);
	buf[n++] = '\n';
	/* One write per line, so it does not interleave with the app's output. */
	if (write(STDERR_FILENO, buf, n) < 0) {
	}
}

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

/* Only before the steady-state loop: once the app runs, the keeper must never
   give up on its own, or the container would end under a healthy app. */
static _Noreturn void bail(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	exit(code);
}

/* Signals the kernel raises for the keeper's own faults: they stay unblocked,
   so a real fault kills the keeper loudly, and they are never forwarded. */
static bool is_fault(int sig)
{
	return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE ||
	       sig == SIGTRAP || sig == SIGSYS || sig == SIGABRT;
}

/* SIGHUP is left out on purpose: it means "reload" to many servers (nginx,
   haproxy), and a remembered stop would end the container at the next
   checkpoint. Images that stop on SIGHUP pass --stop-signal HUP. */
static bool is_stop(int sig)
{
	return sig == SIGTERM || sig == SIGINT || sig == SIGQUIT || sig == stop_sig;
}

static const struct {
	const char *name;
	int sig;
} signames[] = {
	{"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"ILL", SIGILL},
	{"TRAP", SIGTRAP}, {"ABRT", SIGABRT}, {"IOT", SIGIOT}, {"BUS", SIGBUS},
	{"FPE", SIGFPE}, {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"SEGV", SIGSEGV},
	{"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM},
	{"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
	{"TSTP", SIGTSTP}, {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}, {"URG", SIGURG},
	{"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
	{"WINCH", SIGWINCH}, {"IO", SIGIO}, {"POLL", SIGPOLL}, {"PWR", SIGPWR},
	{"SYS", SIGSYS},
};

/* "TERM", "SIGTERM", "15", "RTMIN+3", "SIGRTMAX-1": the forms an image's
   STOPSIGNAL takes. Returns -1 if it names no signal. */
static int parse_signal(const char *s)
{
	char *end;
	long n;

	if (!strncasecmp(s, "SIG", 3))
		s += 3;
	if (!strncasecmp(s, "RTMIN", 5) || !strncasecmp(s, "RTMAX", 5)) {
		bool max = !strncasecmp(s, "RTMAX", 5);

		n = 0;
		if (s[5]) {
			if (s[5] != (max ? '-' : '+') || s[6] < '0' || s[6] > '9')
				return -1;
			n = strtol(s + 6, &end, 10);
			if (*end || n > RTMAX - RTMIN)
				return -1;
		}
		return (int)(max ? RTMAX - n : RTMIN + n);
	}
	if (*s >= '0' && *s <= '9') {
		n = strtol(s, &end, 10);
		return (*end || n < 1 || n > RTMAX) ? -1 : (int)n;
	}
	for (size_t i = 0; i < sizeof signames / sizeof signames[0]; i++)
		if (!strcasecmp(s, signames[i].name))
			return signames[i].sig;
	return -1;
}

/* The signal mask goes through raw syscalls with the kernel's 64-bit set:
   libc's sigset API refuses signals 32-34, which the app may still use. */
static int set_sigmask(int how, const uint64_t *set, uint64_t *old)
{
	return (int)syscall(SYS_rt_sigprocmask, how, set, old, sizeof *set);
}

/* Read the agent's word now. Never cached: each decision about the app's
   absence must rest on the agent's latest word. "" when there is none. */
static const char *read_state(void)
{
	static char buf[sizeof last_state];
	int fd = open(state_file, O_RDONLY | O_CLOEXEC);
	ssize_t n = 0;

	if (fd >= 0) {
		n = read(fd, buf, sizeof buf - 1);
		close(fd);
	}
	if (n < 0)
		n = 0;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r'))
		n--;
	buf[n] = '\0';
	if (strcmp(buf, last_state)) {
		say("state: %s", n ? buf : "(none)");
		strcpy(last_state, buf);
	}
	return buf;
}

/* The states in which the agent expects the app to vanish. Anything else,
   including no state at all, means plain init: the app's death ends us. */
static bool suspended(const char *s)
{
	return !strcmp(s, "checkpointing") || !strcmp(s, "scaled-down") || !strcmp(s, "restoring");
}

/* Is the app here? It must be our child (CRIU's restore re-parents it to us
   with its old pid): only then does its death reach us. A stranger that got
   the pid would never be reaped by us and would keep the container up. */
static bool app_here(void)
{
	siginfo_t si;

	if (app_alive)
		return true;
	memset(&si, 0, sizeof si);
	if (app <= 0 || waitid(P_PID, app, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
		return false;
	app_alive = true; /* a zombie counts: the reaper records its status */
	say("app %d is back", (int)app);
	return true;
}

static void reap(void)
{
	const char *s;
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid != app)
			continue; /* an orphan: reaping it is all we owe it */
		app_alive = false;
		app_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		s = read_state();
		died_running = !suspended(s);
		if (died_running && WIFSIGNALED(st))
			say("app %d killed by signal %d", (int)pid, WTERMSIG(st));
		else if (died_running)
			say("app %d exited with %d", (int)pid, app_status);
		else
			say("app %d gone while %s (status %d), waiting", (int)pid, s, app_status);
	}
}

/* Decide whether to exit, from what we know right now. */
static void settle(void)
{
	const char *s;

	if (app_here())
		return;
	if (died_running)
		exit(app_status);
	if (stop_requested) {
		say("signal %d and no app, exiting", stop_requested);
		exit(0);
	}
	s = read_state();
	if (!suspended(s)) {
		int code = app_status >= 0 ? app_status : 1;
		say("state is %s but app %d is gone, exiting with %d", *s ? s : "(none)", (int)app, code);
		exit(code);
	}
}

static void on_signal(const struct signalfd_siginfo *si)
{
	int sig = si->ssi_signo;

	if (sig == SIGCHLD || is_fault(sig))
		return; /* children are reaped right after; faults are ours */
	/* A SIGPIPE we raised ourselves by logging to a closed stderr. */
	if (sig == SIGPIPE && si->ssi_pid == (uint32_t)getpid())
		return;
	if (is_stop(sig))
		stop_requested = sig;
	if (app_here())
		kill(-app, sig); /* the app leads its process group: reach its helpers too */
}

/* The listening socket the agent takes with pidfd_getfd(2) to wake the app.
   Created before the app, held for our whole life, never accepted on. */
static void make_activator(void)
{
	int one = 1, zero = 0, fd, err;
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
	struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;

	fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0)
			goto ready;
		err = errno;
		close(fd);
		errno = err;
	}
	/* IPv6 disabled in this network namespace: IPv4 only, then. */
	if (errno != EAFNOSUPPORT && errno != EADDRNOTAVAIL)
		goto fail;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0)
		goto close;
ready:
	if (listen(fd, 4096) != 0 || getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		goto close;
	say("activator listening on port %d",
	    ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					   : ((struct sockaddr_in *)&ss)->sin_port));
	return;
close:
	err = errno;
	close(fd);
	errno = err;
fail:
	say("warning: no activator socket: %s", strerror(errno));
}

/* tty: true. The runtime made the terminal our controlling terminal, and the
   app's setsid() would leave it with none (no ^C, no job control). A terminal
   belongs to one session, so we let go of it and the app takes it after its
   setsid(). Letting go sends SIGHUP and SIGCONT to our own process group:
   ignored for that moment. */
static void release_tty(void)
{
	void (*hup)(int), (*cont)(int);

	if (!isatty(STDIN_FILENO) || getsid(0) != getpid() || tcgetsid(STDIN_FILENO) != getpid())
		return;
	hup = signal(SIGHUP, SIG_IGN);
	cont = signal(SIGCONT, SIG_IGN);
	ioctl(STDIN_FILENO, TIOCNOTTY);
	signal(SIGHUP, hup);
	signal(SIGCONT, cont);
}

static pid_t spawn(char **argv, const uint64_t *mask)
{
	int p[2], err = 0;
	ssize_t n;
	pid_t pid;

	/* Closed by a successful exec; carries errno otherwise, so that an app
	   that itself exits 127 is not taken for a command that cannot run. */
	if (pipe2(p, O_CLOEXEC) != 0)
		bail(1, "pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		bail(1, "fork: %s", strerror(errno));
	if (pid == 0) {
		set_sigmask(SIG_SETMASK, mask, NULL);
		/* CRIU dumps a tree only if its session leader is inside it. */
		setsid();
		if (isatty(STDIN_FILENO))
			ioctl(STDIN_FILENO, TIOCSCTTY, 0); /* best effort */
		execvp(argv[0], argv);
		err = errno;
		if (write(p[1], &err, sizeof err) < 0) {
		}
		_exit(127);
	}
	close(p[1]);
	do
		n = read(p[0], &err, sizeof err);
	while (n < 0 && errno == EINTR);
	close(p[0]);
	if (n == sizeof err) {
		waitpid(pid, NULL, 0);
		bail(127, "cannot run '%s': %s", argv[0], strerror(err));
	}
	return pid;
}

static _Noreturn void usage(const char *what, const char *arg)
{
	bail(2, "%s%s%s; " USAGE, what, arg ? " " : "", arg ? arg : "");
}

int main(int argc, char **argv)
{
	const char *state_dir = "/.zeropod/state";
	bool activator = false;
	uint64_t all = 0, old = 0;
	int i, sfd, ifd, timeout = -1;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--")) {
			i++;
			break;
		} else if (!strcmp(argv[i], "--activator")) {
			activator = true;
		} else if (!strcmp(argv[i], "--state-dir")) {
			if (++i >= argc)
				usage("--state-dir needs a value", NULL);
			state_dir = argv[i];
		} else if (!strcmp(argv[i], "--stop-signal")) {
			if (++i >= argc)
				usage("--stop-signal needs a value", NULL);
			if ((stop_sig = parse_signal(argv[i])) < 0)
				usage("--stop-signal: no such signal:", argv[i]);
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			printf("%s\n", USAGE);
			return 0;
		} else {
			usage("unknown option", argv[i]);
		}
	}
	if (i >= argc)
		usage("no command given", NULL);
	if ((size_t)snprintf(state_file, sizeof state_file, "%s/state", state_dir) >= sizeof state_file)
		usage("--state-dir: path too long", NULL);

	/* Outside a container (tests) orphans must still come to us. */
	if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
		say("warning: cannot become a subreaper: %s", strerror(errno));

	release_tty();

	/* Every signal but the faults waits in the signalfd from now on, so
	   nothing sent while the app starts is lost. */
	for (int sig = 1; sig <= RTMAX; sig++)
		if (!is_fault(sig) && sig != SIGKILL && sig != SIGSTOP)
			all |= 1ULL << (sig - 1);
	if (set_sigmask(SIG_BLOCK, &all, &old) != 0)
		bail(1, "sigprocmask: %s", strerror(errno));
	sfd = (int)syscall(SYS_signalfd4, -1, &all, sizeof all, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		bail(1, "signalfd: %s", strerror(errno));

	if (activator)
		make_activator();

	/* No state directory: a plain init. Without inotify, look once a second. */
	ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ifd >= 0 && inotify_add_watch(ifd, state_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
							      IN_CREATE | IN_DELETE | IN_ONLYDIR) < 0) {
		if (errno != ENOENT && errno != ENOTDIR) {
			say("warning: cannot watch %s: %s", state_dir, strerror(errno));
			timeout = 1000;
		}
		close(ifd);
		ifd = -1;
	} else if (ifd < 0) {
		say("warning: inotify: %s", strerror(errno));
		timeout = 1000;
	}

	app = spawn(argv + i, &old);
	app_alive = true;
	say("app %d started: %s", (int)app, argv[i]);

	/* The steady state: from here on, only the app's fate ends the keeper. */
	for (;;) {
		struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN}, {.fd = ifd, .events = POLLIN}};
		struct signalfd_siginfo si;
		char ev[4096];

		poll(pfd, ifd >= 0 ? 2 : 1, timeout);
		reap();
		while (read(sfd, &si, sizeof si) == sizeof si)
			on_signal(&si);
		if (ifd >= 0 && read(ifd, ev, sizeof ev) > 0) {
			while (read(ifd, ev, sizeof ev) > 0)
				;
			read_state(); /* only to log the change */
		}
		reap();
		settle();
	}
}
