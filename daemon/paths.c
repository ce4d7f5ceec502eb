/*
 * paths: the plugin and data directories (see paths.h). The build passes the installed
 * directories, the build tree's binary folder and plugin folder, the source tree, and the
 * installed directories relative to the installed binary folder; the first of these layouts
 * that matches where this binary runs wins.
 */
#include "paths.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef ALIGW_PLUGIN_DIR
#error "ALIGW_PLUGIN_DIR must be defined by the build"
#endif
#ifndef ALIGW_DATA_DIR
#error "ALIGW_DATA_DIR must be defined by the build"
#endif

#define CA_BUNDLE "aliyun-ca-bundle.pem"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char plugin_dir[PATH_MAX];
static char ca_file[PATH_MAX];
static char bin_dir[PATH_MAX]; /* the folder this binary runs from ("" when unknown) */

/* Copies src into a PATH_MAX buffer if it fits. */
static void set_path(char *dst, const char *src)
{
    size_t n = strlen(src);
    if (n < PATH_MAX)
        memcpy(dst, src, n + 1);
}

static void decide(void)
{
    char exe[PATH_MAX], dir[PATH_MAX] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    set_path(plugin_dir, ALIGW_PLUGIN_DIR);
    snprintf(ca_file, sizeof(ca_file), "%s/" CA_BUNDLE, ALIGW_DATA_DIR);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    set_path(bin_dir, exe);
    if (!realpath(exe, dir))
        return;
#if defined(ALIGW_BUILD_BIN_DIR) && defined(ALIGW_BUILD_PLUGIN_DIR) && defined(ALIGW_SOURCE_DIR)
    char built[PATH_MAX];
    if (realpath(ALIGW_BUILD_BIN_DIR, built) && strcmp(built, dir) == 0) {
        set_path(plugin_dir, ALIGW_BUILD_PLUGIN_DIR);
        snprintf(ca_file, sizeof(ca_file), "%s/conf/" CA_BUNDLE, ALIGW_SOURCE_DIR);
        return;
    }
#endif
#if defined(ALIGW_REL_PLUGIN_DIR) && defined(ALIGW_REL_DATA_DIR)
    struct stat st;
    /* An installed tree somewhere else than the prefix it was built for. */
    char p[PATH_MAX + 64];
    if (stat(ALIGW_PLUGIN_DIR, &st) < 0) {
        snprintf(p, sizeof(p), "%s/%s", dir, ALIGW_REL_PLUGIN_DIR);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            set_path(plugin_dir, p);
    }
    if (stat(ca_file, &st) < 0) {
        snprintf(p, sizeof(p), "%s/%s/" CA_BUNDLE, dir, ALIGW_REL_DATA_DIR);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            set_path(ca_file, p);
    }
#endif
}

const char *paths_plugin_dir(void)
{
    pthread_once(&once, decide);
    return plugin_dir;
}

const char *paths_ca_file(void)
{
    pthread_once(&once, decide);
    return ca_file;
}

char *paths_helper(const char *env, const char *name)
{
    const char *v = getenv(env);
    char *s = NULL;

    if (v && *v)
        return strdup(v);
    pthread_once(&once, decide);
    if (bin_dir[0]) {
        if (asprintf(&s, "%s/%s", bin_dir, name) >= 0 && access(s, X_OK) == 0)
            return s;
        free(s);
    }
    if (asprintf(&s, "%s/%s", ALIGW_LIBEXEC_DIR, name) < 0)
        return NULL;
    return s;
}
