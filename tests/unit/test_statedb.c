/* test_statedb: registration results and runtime devices (daemon/statedb.c), on real files. */
#include "check.h"
#include "errors.h"
#include "statedb.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[] = "/tmp/aligw-test-statedb-XXXXXX";

static void test_registration(const char *path)
{
    struct statedb *s;
    struct statedb_reg r = {0}, got;

    CHECK_INT(statedb_open(path, &s), 0);
    CHECK_INT(statedb_reg_get(s, "pk1", "dev1", &got), -ENOENT);
    r.device_secret = "s3cr3t";
    r.registered_at = 1700000000;
    CHECK_INT(statedb_reg_put(s, "pk1", "dev1", &r), 0);
    r = (struct statedb_reg){.client_id = "cid-2", .device_token = "tok-2"};
    CHECK_INT(statedb_reg_put(s, "pk1", "dev2", &r), 0);
    /* Neither a secret nor a complete client_id + token. */
    r = (struct statedb_reg){.client_id = "cid-only"};
    CHECK_INT(statedb_reg_put(s, "pk1", "dev3", &r), -EINVAL);
    statedb_close(s);

    /* Survives a reopen (it was durable when put returned). */
    CHECK_INT(statedb_open(path, &s), 0);
    CHECK_INT(statedb_reg_get(s, "pk1", "dev1", &got), 0);
    CHECK_STR(got.device_secret, "s3cr3t");
    CHECK(got.client_id == NULL && got.device_token == NULL);
    CHECK_INT(got.registered_at, 1700000000);
    statedb_reg_free(&got);
    CHECK(got.device_secret == NULL);

    CHECK_INT(statedb_reg_get(s, "pk1", "dev2", &got), 0);
    CHECK(got.device_secret == NULL);
    CHECK_STR(got.client_id, "cid-2");
    CHECK_STR(got.device_token, "tok-2");
    CHECK(got.registered_at > 1700000000); /* defaulted to now */
    statedb_reg_free(&got);
    CHECK_INT(statedb_reg_get(s, "pk1", "dev3", &got), -ENOENT);
    CHECK_INT(statedb_reg_get(s, "pk2", "dev1", &got), -ENOENT);

    /* Replace, then delete. */
    r = (struct statedb_reg){.device_secret = "new", .registered_at = 5};
    CHECK_INT(statedb_reg_put(s, "pk1", "dev1", &r), 0);
    CHECK_INT(statedb_reg_get(s, "pk1", "dev1", &got), 0);
    CHECK_STR(got.device_secret, "new");
    CHECK_INT(got.registered_at, 5);
    statedb_reg_free(&got);
    CHECK_INT(statedb_reg_delete(s, "pk1", "dev1"), 0);
    CHECK_INT(statedb_reg_delete(s, "pk1", "dev1"), -ENOENT);
    CHECK_INT(statedb_reg_get(s, "pk1", "dev1", &got), -ENOENT);
    statedb_close(s);
}

static void test_devices(const char *path)
{
    struct statedb *s;
    struct statedb_device *v;
    size_t n;

    CHECK_INT(statedb_open(path, &s), 0);
    CHECK_INT(statedb_device_list(s, &v, &n), 0);
    CHECK_INT(n, 0);
    statedb_device_list_free(v, n);
    CHECK_INT(statedb_device_add(s, "pkA", "d1", "{\"device_secret\":\"x\",\"rate\":5}"), 0);
    CHECK_INT(statedb_device_add(s, "pkA", "d2", "{}"), 0);
    CHECK_INT(statedb_device_add(s, "pkA", "d1", "{}"), -EEXIST);
    CHECK_INT(statedb_device_add(s, "pkA", "d3", "{not json"), -EINVAL);
    statedb_close(s);

    CHECK_INT(statedb_open(path, &s), 0);
    CHECK_INT(statedb_device_list(s, &v, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(v[0].product_key, "pkA");
        CHECK_STR(v[0].device_name, "d1");
        CHECK_STR(v[0].config, "{\"device_secret\":\"x\",\"rate\":5}");
        CHECK_STR(v[1].device_name, "d2");
    }
    statedb_device_list_free(v, n);
    CHECK_INT(statedb_device_remove(s, "pkA", "d1"), 0);
    CHECK_INT(statedb_device_remove(s, "pkA", "d1"), -ENOENT);
    CHECK_INT(statedb_device_list(s, &v, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK_STR(v[0].device_name, "d2");
    statedb_device_list_free(v, n);
    statedb_close(s);
}

static void test_corrupt(void)
{
    char path[256], buf[64];
    struct statedb *s;
    snprintf(path, sizeof(path), "%s/bad.db", dir);
    FILE *f = fopen(path, "wb");
    fputs("this is not a database, just some text that is long enough", f);
    fclose(f);
    CHECK_INT(statedb_open(path, &s), ALIGW_ECORRUPT);
    f = fopen(path, "rb");
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    CHECK_INT(n, 58);
    CHECK(memcmp(buf, "this is not a database", 22) == 0);
}

int main(void)
{
    char path[256], cmd[300];
    if (!mkdtemp(dir))
        return 2;
    snprintf(path, sizeof(path), "%s/state.db", dir);
    test_registration(path);
    test_devices(path);
    test_corrupt();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return check_done();
}
