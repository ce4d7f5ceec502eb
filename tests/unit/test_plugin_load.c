/* plugin_load's rules for what a plugin hands the host, the same on both sides of the plugin
 * socket: ABI 1.3's event list and request checks. */
#include "check.h"
#include "plugin_load.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_events(void)
{
    static const char *const ev[] = {"state", "service_call", "Bad-Kind", "", "state", "x y", NULL};
    char skipped[64];
    char *j = plugin_events_join(ev, skipped, sizeof skipped);
    CHECK_STR(j, ",state,service_call,");
    CHECK_STR(skipped, "Bad-Kind, , x y");
    CHECK(plugin_events_has(j, "state"));
    CHECK(plugin_events_has(j, "service_call"));
    CHECK(!plugin_events_has(j, "service")); /* a prefix of a kind is not the kind */
    CHECK(!plugin_events_has(j, "call"));
    CHECK(!plugin_events_has(j, ""));
    CHECK(!plugin_events_has(NULL, "state"));
    free(j);
    j = plugin_events_join(NULL, NULL, 0);
    CHECK_STR(j, "");
    CHECK(!plugin_events_has(j, "state"));
    free(j);
    /* at most 32 kinds */
    const char *many[40];
    char names[40][8];
    for (int i = 0; i < 39; i++) {
        snprintf(names[i], sizeof names[i], "k%c%c", 'a' + i / 26, 'a' + i % 26);
        many[i] = names[i];
    }
    many[39] = NULL;
    j = plugin_events_join(many, skipped, sizeof skipped);
    CHECK(plugin_events_has(j, names[31]));
    CHECK(!plugin_events_has(j, names[32]));
    free(j);
}

static void test_request(void)
{
    char *out;
    CHECK_INT(plugin_request_prepare("{\"op\":\"status\"}", "pk/dn", &out), 0);
    CHECK_STR(out, "{\"op\":\"status\",\"id\":1}");
    free(out);
    CHECK_INT(plugin_request_prepare("{\"op\":\"device\",\"device\":\"pk/dn\",\"id\":\"x\"}",
                                     "pk/dn", &out),
              0);
    CHECK(strstr(out, "\"id\":1") != NULL);
    free(out);
    CHECK_INT(plugin_request_prepare("{\"op\":\"device\",\"device\":\"pk/other\"}", "pk/dn", &out),
              -EPERM);
    CHECK(out == NULL);
    CHECK_INT(plugin_request_prepare("{\"op\":\"device\",\"device\":7}", "pk/dn", &out), -EPERM);
    CHECK_INT(plugin_request_prepare("[1]", "pk/dn", &out), -EINVAL);
    CHECK_INT(plugin_request_prepare("{\"op\":", "pk/dn", &out), -EINVAL);
    CHECK_INT(plugin_request_prepare("{\"a\":1,\"a\":2}", "pk/dn", &out), -EINVAL);
    CHECK_INT(plugin_request_prepare(NULL, "pk/dn", &out), -EINVAL);
    size_t n = PLUGIN_REQUEST_MAX + 16;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "{\"op\":\"status\"}", 15);
    big[n] = '\0';
    CHECK_INT(plugin_request_prepare(big, "pk/dn", &out), -EINVAL);
    free(big);
}

int main(void)
{
    test_events();
    test_request();
    return check_done();
}
