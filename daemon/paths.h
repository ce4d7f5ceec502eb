/*
 * paths: where aligwd finds its plugins and its read-only data (the CA bundle). Installed, these
 * are the directories fixed at build time (ALIGW_PLUGIN_DIR, ALIGW_DATA_DIR). A binary that runs
 * from its own build tree uses the build's plugin folder and the source tree's conf/ instead, and
 * an installed tree that was moved (a DESTDIR staging copy, another prefix) is found relative to
 * the binary, so `aligwd --check-config -c conf/aligw.example.json` passes as it is from a build
 * tree and after install. Decided once, from /proc/self/exe; thread-safe.
 */
#ifndef ALIGW_PATHS_H
#define ALIGW_PATHS_H

/* The directory plugins named without a '/' are loaded from (no trailing slash). */
const char *paths_plugin_dir(void);
/* The default cloud.ca_file: the shipped Aliyun root CA bundle. */
const char *paths_ca_file(void);
/* The helper program name (aligw-plugin-host, aligw-session-shard): the path in the environment
 * variable env when set, else name next to this binary when it is there, else the installed one
 * (ALIGW_LIBEXEC_DIR). Malloc'd (NULL without memory). */
char *paths_helper(const char *env, const char *name);

#endif
