/*
 * session_paho: the session layer's Paho implementation (session.h): one MQTTAsync client per
 * session in this process. aligwd runs it directly for a small fleet; every session shard
 * (shard_main.c) runs it for its part of a large one. Each function keeps the contract of the
 * session.h call of the same name; params->ca_dir is used as given (session.c resolves it).
 */
#ifndef ALIGW_SESSION_PAHO_H
#define ALIGW_SESSION_PAHO_H

#include "session.h"

int paho_layer_init(uv_loop_t *loop, session_event_cb cb, void *arg);
void paho_layer_close(void);
int paho_open(uint64_t id, const struct session_params *p);
int paho_connect(uint64_t id);
void paho_close(uint64_t id);
int paho_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                 uint64_t ref);
int paho_subscribe(uint64_t id, char *const *topics, size_t n);

#endif
