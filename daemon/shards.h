/*
 * shards: the session layer spread over worker processes (aligw-session-shard), for fleets
 * where one process's Paho would scan too many clients per packet (session.h). aligwd keeps
 * the outbox, the API and every decision; a shard only runs Paho clients. Each session is
 * placed on the shard with the fewest at its open and stays there until closed.
 *
 * A shard that exits (a crash, kill -9, an out-of-memory kill) is started again at once (after
 * a back-off if it keeps dying): its sessions that were connecting get SESSION_CONNECT_FAILED,
 * the connected ones SESSION_LOST, and those waiting for a retry are opened on the new process
 * at their next session_connect. Nothing is lost: a publish in flight on the dead shard was
 * never acknowledged, so the outbox still holds it and sends it again on the next connection.
 * A shard whose loop answers no ping for 20 s (a deadlock, a stopped process) is killed and
 * handled the same way. Loop thread only; the functions keep session.h's contracts.
 */
#ifndef ALIGW_SHARDS_H
#define ALIGW_SHARDS_H

#include "session.h"

int shards_init(uv_loop_t *loop, session_event_cb cb, void *arg, unsigned n);
void shards_close(void);
int shards_open(uint64_t id, const struct session_params *p);
int shards_connect(uint64_t id);
void shards_close_session(uint64_t id);
int shards_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                   uint64_t ref);
int shards_subscribe(uint64_t id, char *const *topics, size_t n);
size_t shards_info(struct session_shard_info *v, size_t n);

#endif
