/*
 * main: aligwd's entry point. Parses the command line, loads and validates the configuration,
 * opens the state database and the outbox, starts the device registry, the local API and the
 * plugins on one libuv loop, and talks to systemd. Signals only wake the loop: SIGTERM/SIGINT
 * start an orderly shutdown that closes every handle, SIGHUP reloads the configuration through
 * the same parse-and-validate path (a config with errors is refused and the running one kept).
 *
 * Exit codes (documented in the README and aligwd --help; the unit's RestartPreventExitStatus
 * keeps systemd from restarting into the same refusal): 0 stopped on request, 1 could not start
 * (config, sockets, other errors), 2 bad command line, 3 a damaged database (at start or found
 * while running; the file is left as it is), 4 the outbox is missing, emptied, another one or
 * older than what the state database recorded (--accept-store-loss to go on with it), 5 the
 * state_dir is in use by another aligwd (an exclusive flock on state_dir/aligwd.lock, held for
 * the daemon's life, so two daemons never number messages in one outbox).
 *
 * The outbox record: state.db keeps the outbox's identity and a seq it is known to have committed
 * (refreshed at most once a second while messages come in, and at a clean stop), so a deleted or
 * emptied outbox, or one whose -wal file was deleted, is not taken for an empty queue.
 */
#include "api.h"
#include "cadir.h"
#include "config.h"
#include "db.h"
#include "devices.h"
#include "errors.h"
#include "log.h"
#include "loopstat.h"
#include "metrics.h"
#include "notify.h"
#include "outbox.h"
#include "plugins.h"
#include "statedb.h"
#include "tlsbuf.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    EXIT_START = 1,
    EXIT_USAGE = 2,
    EXIT_DAMAGED = 3,
    EXIT_STORE_LOST = 4,
    EXIT_IN_USE = 5,
};

#define RECORD_EVERY_MS 1000

static struct {
    uv_loop_t *loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t record_timer;
    bool record_timer_on;
    uint64_t record_failed_ms; /* loop clock of the last failed record, 0 if none */
    struct statedb_outbox rec; /* what state.db holds about the outbox */
    uv_timer_t log_timer;      /* reports the per-device log lines suppressed by the rate limit */
    struct config *cfg;        /* in force */
    struct config *boot;       /* loaded at start: its restart-only keys are the ones in force */
    struct outbox *ob;
    struct statedb *db;
    int exit_code;
    bool stopping;
} M;

static void usage(FILE *f)
{
    fprintf(f, "Usage: aligwd [OPTIONS]\n"
               "Connects many devices to the Alibaba Cloud IoT Platform, one MQTT session each,\n"
               "with every outbound message stored in SQLite until the cloud has it.\n\n"
               "  -c, --config FILE   configuration file (default " ALIGW_CONF_DIR "/aligw.json)\n"
               "      --check-config  validate the configuration, print every error, and exit\n"
               "      --check-store   check every page of the outbox and state database, and exit\n"
               "                      (0 intact, 3 damaged, 1 cannot check)\n"
               "      --accept-store-loss  start even though the outbox is missing, emptied or\n"
               "                      older than the state database remembers (messages lost)\n"
               "  -v, --verbose       more logging (repeat for debug); overrides log_level\n"
               "  -V, --version       print the version and exit\n"
               "  -h, --help          this text\n\n"
               "Signals: SIGTERM/SIGINT stop, SIGHUP reloads the configuration.\n"
               "Exit codes: 0 stopped, 1 cannot start, 2 usage, 3 damaged database,\n"
               "4 outbox lost (see --accept-store-loss), 5 state_dir in use by another aligwd.\n"
               "Documentation: /usr/share/doc/aligw, aligwctl --help.\n");
}

static void print_errors(const struct config_errors *e, int prio, const char *prefix,
                         bool to_stdout)
{
    for (size_t i = 0; i < e->n; i++) {
        if (to_stdout)
            printf("%s%s\n", prefix, e->v[i].text);
        else
            log_write(prio, "%s%s", prefix, e->v[i].text);
    }
}

/* Creates dir (and parents) with mode 0750 when it is missing. */
static int ensure_dir(const char *dir)
{
    char tmp[4096];
    size_t len = strlen(dir);

    if (len == 0 || len >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, dir, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* One socket per device session, plus the databases and API clients: raise the soft limit on
 * open files to the hard one (systemd's LimitNOFILE sets both). */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_errno(LOG_WARNING, -errno, "cannot raise the open-file limit to %llu",
                      (unsigned long long)rl.rlim_max);
    }
}

#define FD_API_RESERVE 64 /* descriptors kept for API clients, plugins and SQLite's own files */

/*
 * After start-up opened the databases and the API socket: how many device sessions the open-file
 * limit leaves room for, keeping FD_API_RESERVE for the API so the operator can always look.
 * Said at start (and in status); devices beyond wait with "too many open files".
 */
static void plan_fds(size_t n_devices)
{
    struct rlimit rl;
    size_t open_now = 0;
    DIR *dir;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    if ((dir = opendir("/proc/self/fd")) != NULL) {
        struct dirent *e;
        while ((e = readdir(dir)) != NULL)
            open_now += e->d_name[0] != '.';
        closedir(dir);
    } else {
        open_now = 32;
    }
    size_t used = open_now + FD_API_RESERVE;
    size_t room = rl.rlim_cur > used ? (size_t)rl.rlim_cur - used : 0;
    devices_set_session_limit(room ? room : 1, (unsigned long long)rl.rlim_cur);
    if (room < n_devices)
        log_warn("the open-file limit (%llu) serves %zu of the %zu configured devices (%zu "
                 "descriptors are the daemon's own, %d kept for the API): the others wait with "
                 "\"too many open files\". Raise LimitNOFILE (systemd) or ulimit -n to at least "
                 "%zu",
                 (unsigned long long)rl.rlim_cur, room, n_devices, open_now, FD_API_RESERVE,
                 n_devices + used);
    else
        log_info("the open-file limit (%llu) serves up to %zu devices (%zu configured)",
                 (unsigned long long)rl.rlim_cur, room, n_devices);
}

static void status_line(char *buf, size_t size)
{
    struct outbox_stats st = {0};
    struct outbox_health h = {.last_error = ""};
    if (M.ob) {
        outbox_total_stats(M.ob, &st);
        outbox_health(M.ob, &h);
    }
    if (h.damaged) {
        snprintf(buf, size, "outbox damaged, stopping: %s", h.last_error);
        return;
    }
    snprintf(buf, size, "%zu/%zu devices online, %llu queued (%llu bytes), %llu dropped",
             devices_online(), devices_count(), (unsigned long long)st.count,
             (unsigned long long)st.bytes, (unsigned long long)(st.dropped + st.expired));
}

/* --check-store: a full integrity_check of both databases (the daemon's start checks less, to
 * open a large store at once). Prints one verdict per file; exit code 0, EXIT_DAMAGED or
 * EXIT_START (a file could not be checked). */
static int check_stores(const struct config *cfg)
{
    char state[4096];
    const char *paths[2] = {cfg->store.path, state};
    int worst = 0;

    snprintf(state, sizeof(state), "%s/state.db", cfg->state_dir);
    for (int i = 0; i < 2; i++) {
        int rc = db_check(paths[i], stdout);
        if (rc == ALIGW_ECORRUPT)
            worst = EXIT_DAMAGED;
        else if (rc < 0 && worst == 0)
            worst = EXIT_START;
    }
    return worst;
}

/* SIGHUP and the API's reload: a valid config is applied, except the keys that need a restart,
 * which are named in restart (len bytes) and in the log. */
static int reload(char *restart, size_t len)
{
    struct config *nc = NULL;
    struct config_errors errs = {0}, warns = {0};
    int rc;

    notify_reloading();
    log_notice("reloading %s", M.cfg->path);
    rc = config_load(M.cfg->path, &nc, &errs, &warns);
    print_errors(&warns, LOG_WARNING, "", false);
    if (rc < 0) {
        print_errors(&errs, LOG_ERR, "", false);
        log_error("reload refused: %zu error(s) in %s; the running configuration is kept",
                  config_errors_count(&errs), M.cfg->path);
    } else {
        log_level = nc->log_level;
        config_restart_keys(M.boot, nc, restart, len);
        if (restart[0])
            log_warn("changed in %s but applied only after a restart of aligwd: %s", M.cfg->path,
                     restart);
        devices_apply(nc);
        api_apply_config(nc);
        metrics_apply_config(nc);
        if (M.cfg != M.boot)
            config_free(M.cfg);
        M.cfg = nc;
        log_notice("configuration reloaded: %zu devices", devices_count());
    }
    config_errors_free(&errs);
    config_errors_free(&warns);
    notify_ready();
    return rc;
}

/*
 * One state_dir, one daemon: an exclusive lock on state_dir/aligwd.lock, which then holds our
 * pid. The descriptor stays open (and locked) until the process ends. Returns 0, EXIT_IN_USE or
 * EXIT_START, logged.
 */
static int lock_state_dir(const char *dir)
{
    char path[4096], pid[32] = "";
    int fd;

    snprintf(path, sizeof(path), "%s/aligwd.lock", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        log_errno(LOG_ERR, -errno, "cannot open the lock file %s", path);
        return EXIT_START;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t n = e == EWOULDBLOCK ? pread(fd, pid, sizeof(pid) - 1, 0) : -1;
        close(fd);
        if (e != EWOULDBLOCK) {
            log_errno(LOG_ERR, -e, "cannot lock %s", path);
            return EXIT_START;
        }
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        log_error("state_dir %s is in use by pid %s (another aligwd holds %s); one state_dir "
                  "serves one daemon: stop the other one or give this one its own state_dir",
                  dir, pid[0] ? pid : "?", path);
        return EXIT_IN_USE;
    }
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("cannot write our pid into %s", path);
    return 0; /* fd is kept open on purpose: the lock lives as long as the process */
}

/* Records what the outbox has committed in state.db, when it moved on. */
static void record_outbox(void)
{
    struct outbox_health h;
    if (!M.ob)
        return;
    outbox_health(M.ob, &h);
    struct statedb_outbox r = {.identity = outbox_identity(M.ob),
                               .committed_seq = outbox_committed_seq(M.ob)};
    if (h.damaged || r.identity == 0 ||
        (r.identity == M.rec.identity && r.committed_seq == M.rec.committed_seq))
        return;
    /* A failure (a full disk) is logged by statedb; it is tried again after a pause, not every
     * second. */
    uint64_t now = uv_now(M.loop);
    if (M.record_failed_ms && now - M.record_failed_ms < 30000)
        return;
    if (statedb_outbox_put(M.db, &r) == 0) {
        M.rec = r;
        M.record_failed_ms = 0;
    } else {
        M.record_failed_ms = now ? now : 1;
    }
}

static void on_record_timer(uv_timer_t *t)
{
    record_outbox();
}

/*
 * Before the outbox is opened (ob NULL) and after: is this the outbox state.db remembers, with
 * everything it remembers committed? Returns 0, or EXIT_STORE_LOST after saying why (or, with
 * accept, after a warning).
 */
static int check_outbox_record(const char *path, struct outbox *ob, bool accept)
{
    char why[512];
    struct stat st;

    if (M.rec.identity == 0)
        return 0; /* nothing recorded yet: a new gateway, or one from before the record */
    why[0] = '\0';
    if (!ob && stat(path, &st) < 0 && errno == ENOENT)
        snprintf(why, sizeof(why), "is missing");
    else if (!ob && stat(path, &st) == 0 && st.st_size == 0)
        snprintf(why, sizeof(why), "is empty (0 bytes)");
    else if (ob && outbox_identity(ob) != M.rec.identity)
        snprintf(why, sizeof(why),
                 "is not the outbox this gateway used (it was recreated or replaced)");
    else if (ob && outbox_committed_seq(ob) < M.rec.committed_seq)
        snprintf(why, sizeof(why),
                 "ends at message %lld but message %lld had been committed: its -wal file was "
                 "probably deleted, or an older copy was restored",
                 (long long)outbox_committed_seq(ob), (long long)M.rec.committed_seq);
    if (!why[0])
        return 0;
    if (accept) {
        log_warn("the outbox %s %s; going on as --accept-store-loss says: messages accepted "
                 "earlier are lost",
                 path, why);
        M.rec.identity = 0;
        return 0;
    }
    log_error("the outbox %s %s (state.db remembers it up to message %lld). Messages accepted "
              "earlier may be lost, so aligwd does not start with it as if the queue were empty. "
              "Restore the file (with its -wal file) if you can; to go on without the lost "
              "messages, start once with --accept-store-loss. Exit code %d",
              path, why, (long long)M.rec.committed_seq, EXIT_STORE_LOST);
    return EXIT_STORE_LOST;
}

static void on_outbox_closed(void *arg)
{
    M.ob = NULL;
}

static void shutdown_all(void)
{
    if (M.stopping)
        return;
    M.stopping = true;
    notify_stopping();
    log_notice("shutting down");
    record_outbox();
    if (M.record_timer_on)
        uv_close((uv_handle_t *)&M.record_timer, NULL);
    metrics_close();
    api_close();
    devices_close();
    cadir_close(); /* after every session is gone */
    if (M.ob)
        outbox_close(M.ob, on_outbox_closed, NULL);
    notify_close();
    loopstat_stop();
    uv_close((uv_handle_t *)&M.sigterm, NULL);
    uv_close((uv_handle_t *)&M.sigint, NULL);
    uv_close((uv_handle_t *)&M.sighup, NULL);
    uv_close((uv_handle_t *)&M.log_timer, NULL);
}

static void on_log_timer(uv_timer_t *t)
{
    log_flush_suppressed();
}

static void on_signal(uv_signal_t *h, int signum)
{
    char restart[1024];
    if (signum == SIGHUP)
        reload(restart, sizeof(restart));
    else
        shutdown_all();
}

/* A damaged outbox found while running: stop loudly (systemd shows a failed unit) instead of
 * delivering part of the queue and stalling. The file is not touched again. */
static void on_outbox_damaged(void *arg, const char *what)
{
    log_error("%s is damaged (%s): stopping with exit code %d. Nothing more is written to it. Run "
              "aligwd --check-store for a report, then restore the file from a backup or move "
              "it (with its -wal and -shm files) away to start with an empty queue",
              M.cfg->store.path, what, EXIT_DAMAGED);
    M.exit_code = EXIT_DAMAGED;
    notify_status();
    shutdown_all();
}

static void on_outbox_ready(void *arg, const char *key)
{
    devices_outbox_ready(key);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check-config", no_argument, NULL, 'C'},
                                         {"verbose", no_argument, NULL, 'v'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"check-store", no_argument, NULL, 'S'},
                                         {"accept-store-loss", no_argument, NULL, 'L'},
                                         {NULL, 0, NULL, 0}};
    const char *path = ALIGW_CONF_DIR "/aligw.json";
    bool check = false, check_store = false, accept_loss = false;
    int verbose = 0, c, rc;
    struct config_errors errs = {0}, warns = {0};

    log_init();
    while ((c = getopt_long(argc, argv, "c:vVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'C':
            check = true;
            break;
        case 'S':
            check_store = true;
            break;
        case 'L':
            accept_loss = true;
            break;
        case 'v':
            verbose++;
            break;
        case 'V':
            printf("aligwd %s\n", ALIGW_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "aligwd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }

    rc = config_load(path, &M.cfg, &errs, &warns);
    if (check) {
        size_t n_errors = config_errors_count(&errs);
        print_errors(&warns, 0, "warning: ", true);
        print_errors(&errs, 0, "", true);
        /* Each plugin is loaded and checks its own config (then unloaded). */
        for (size_t i = 0; rc == 0 && i < M.cfg->n_plugins; i++) {
            char msg[512];
            if (plugins_check_config(&M.cfg->plugins[i], msg, sizeof(msg)) < 0) {
                printf("%s: plugins[%zu]: %s\n", path, i, msg);
                n_errors++;
            }
        }
        if (n_errors == 0)
            printf("configuration OK\n");
        else
            printf("%zu error(s) in the configuration\n", n_errors);
        rc = n_errors ? -EINVAL : 0;
        config_errors_free(&errs);
        config_errors_free(&warns);
        if (M.cfg)
            config_free(M.cfg);
        return rc == 0 ? 0 : 1;
    }
    if (check_store) {
        if (rc < 0) {
            print_errors(&errs, 0, "", true);
            printf("cannot check the store: %zu error(s) in %s\n", config_errors_count(&errs),
                   path);
            rc = EXIT_START;
        } else {
            rc = check_stores(M.cfg);
        }
        config_errors_free(&errs);
        config_errors_free(&warns);
        if (M.cfg)
            config_free(M.cfg);
        return rc;
    }
    print_errors(&warns, LOG_WARNING, "", false);
    if (rc < 0) {
        print_errors(&errs, LOG_ERR, "", false);
        log_error("%zu error(s) in %s; not starting", config_errors_count(&errs), path);
        config_errors_free(&errs);
        config_errors_free(&warns);
        return 1;
    }
    config_errors_free(&errs);
    config_errors_free(&warns);
    M.boot = M.cfg;
    log_level = M.cfg->log_level;
    if (verbose)
        log_level = verbose > 1 ? LOG_DEBUG : (log_level < LOG_INFO ? LOG_INFO : LOG_DEBUG);

    signal(SIGPIPE, SIG_IGN);
    umask(0027);
    raise_fd_limit();
    M.loop = uv_default_loop();

    if ((rc = ensure_dir(M.cfg->state_dir)) < 0 || (rc = ensure_dir(M.cfg->runtime_dir)) < 0) {
        log_errno(LOG_ERR, rc, "cannot create %s or %s", M.cfg->state_dir, M.cfg->runtime_dir);
        return 1;
    }
    if ((rc = lock_state_dir(M.cfg->state_dir)) != 0)
        return rc;
    if (!tlsbuf_active())
        log_notice("TLS: SSL_CTX_new is not aligwd's (see tlsbuf.h): idle TLS sessions keep their "
                   "record buffers");
    /* after the lock: a second daemon must not clear the first one's directories */
    char cadir[4096];
    snprintf(cadir, sizeof(cadir), "%s/ca", M.cfg->runtime_dir);
    if ((rc = cadir_init(cadir)) < 0) /* sessions then load their CA file whole (session.c) */
        log_errno(LOG_WARNING, rc, "cannot prepare %s for hashed CA directories", cadir);
    char dbpath[4096];
    snprintf(dbpath, sizeof(dbpath), "%s/state.db", M.cfg->state_dir);
    rc = statedb_open(dbpath, &M.db);
    if (rc < 0) {
        log_errno(LOG_ERR, rc, "cannot open the state database %s", dbpath);
        return rc == ALIGW_ECORRUPT ? EXIT_DAMAGED : EXIT_START;
    }
    if ((rc = statedb_outbox_get(M.db, &M.rec)) < 0 ||
        (rc = check_outbox_record(M.cfg->store.path, NULL, accept_loss)) != 0) {
        statedb_close(M.db);
        return rc < 0 ? EXIT_START : rc;
    }
    struct outbox_opts oo = {.path = M.cfg->store.path,
                             .durability = M.cfg->store.durability,
                             .max_bytes = M.cfg->store.max_bytes,
                             .max_device_bytes = 0,
                             .policy = M.cfg->store.policy,
                             .ttl_s = M.cfg->store.ttl_s};
    rc = outbox_open(M.loop, &oo, on_outbox_ready, NULL, &M.ob);
    if (rc < 0) {
        log_errno(LOG_ERR, rc, "cannot open the outbox %s", M.cfg->store.path);
        statedb_close(M.db);
        return rc == ALIGW_ECORRUPT ? EXIT_DAMAGED : EXIT_START;
    }
    outbox_set_damaged_cb(M.ob, on_outbox_damaged, NULL);
    if ((rc = check_outbox_record(M.cfg->store.path, M.ob, accept_loss)) != 0) {
        outbox_close(M.ob, on_outbox_closed, NULL);
        uv_run(M.loop, UV_RUN_DEFAULT);
        statedb_close(M.db);
        return rc;
    }
    record_outbox();
    uv_timer_init(M.loop, &M.record_timer);
    uv_timer_start(&M.record_timer, on_record_timer, RECORD_EVERY_MS, RECORD_EVERY_MS);
    M.record_timer_on = true;

    if ((rc = loopstat_start(M.loop)) < 0)
        log_errno(LOG_WARNING, rc, "loop turn metrics unavailable");
    uv_signal_init(M.loop, &M.sigterm);
    uv_signal_init(M.loop, &M.sigint);
    uv_signal_init(M.loop, &M.sighup);
    uv_signal_start(&M.sigterm, on_signal, SIGTERM);
    uv_signal_start(&M.sigint, on_signal, SIGINT);
    uv_signal_start(&M.sighup, on_signal, SIGHUP);
    uv_timer_init(M.loop, &M.log_timer);
    uv_timer_start(&M.log_timer, on_log_timer, LOG_WINDOW_MS / 2, LOG_WINDOW_MS / 2);
    notify_start(M.loop, status_line);

    rc = api_start(M.loop, M.cfg, M.ob, M.db, reload);
    if (rc < 0)
        log_errno(LOG_ERR, rc, "cannot start the local API");
    else if ((rc = metrics_start(M.loop, M.cfg, M.ob)) < 0)
        log_errno(LOG_ERR, rc, "cannot start the metrics endpoint");
    if (rc < 0) {
        M.exit_code = 1;
        shutdown_all();
    } else {
        plan_fds(devices_count());
        outbox_foreach_pending(M.ob, on_outbox_ready, NULL); /* what was queued before */
        log_notice("aligwd %s started: %zu devices, outbox %s", ALIGW_VERSION, devices_count(),
                   M.cfg->store.path);
        notify_ready();
    }

    uv_run(M.loop, UV_RUN_DEFAULT);
    devices_release_memory();
    statedb_close(M.db);
    if (uv_loop_close(M.loop) == UV_EBUSY)
        log_warn("some handles were still open at exit");
    if (M.cfg != M.boot)
        config_free(M.boot);
    config_free(M.cfg);
    log_flush_suppressed();
    log_info("stopped");
    return M.exit_code;
}
