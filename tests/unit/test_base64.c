/* base64: RFC 4648 test vectors both ways, optional padding, and refused input. */
#include "base64.h"
#include "check.h"

#include <stdlib.h>

int main(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    unsigned char out[64];

    for (size_t i = 0; i < 7; i++) {
        char *e = base64_encode(plain[i], strlen(plain[i]));
        CHECK_STR(e, coded[i]);
        free(e);
        long n = base64_decode(coded[i], strlen(coded[i]), out);
        CHECK_INT(n, (long)strlen(plain[i]));
        CHECK(n >= 0 && memcmp(out, plain[i], (size_t)n) == 0);
    }
    /* padding is optional */
    CHECK_INT(base64_decode("Zm9vYg", 6, out), 4);
    CHECK(memcmp(out, "foob", 4) == 0);
    /* binary bytes survive the round trip */
    unsigned char bin[] = {0, 255, 128, 1, 2};
    char *e = base64_encode(bin, sizeof(bin));
    CHECK_INT(base64_decode(e, strlen(e), out), (long)sizeof(bin));
    CHECK(memcmp(out, bin, sizeof(bin)) == 0);
    free(e);
    /* outside the alphabet, or a length no base64 text has */
    CHECK_INT(base64_decode("Zm9v!", 5, out), -1);
    CHECK_INT(base64_decode("Z", 1, out), -1);
    CHECK_INT(base64_decode("Zm9 v", 5, out), -1);
    return check_done();
}
