/* errors: printable names for aligw's error space (see errors.h). */
#include "errors.h"

#include <string.h>

const char *aligw_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case ALIGW_EAUTH:
        return "authentication refused by the platform";
    case ALIGW_EKICKED:
        return "session taken over by another login of the same device";
    case ALIGW_ESTOREFULL:
        return "store full";
    case ALIGW_ECORRUPT:
        return "database is damaged";
    case ALIGW_EPROTO:
        return "protocol error";
    case ALIGW_EREFUSED:
        return "refused by the platform";
    case ALIGW_EACTIVE:
        return "device already active on the platform (reset it in the console to register again)";
    case ALIGW_ECONFIG:
        return "invalid configuration";
    case ALIGW_EPAHO:
        return "MQTT client error";
    case ALIGW_ENODEVICE:
        return "no such device";
    case ALIGW_EPLUGIN:
        return "plugin error";
    case ALIGW_ETLS:
        return "TLS handshake or server certificate check failed";
    default:
        return err < 0 && err > -4000 ? strerror(-err) : "unknown error";
    }
}
