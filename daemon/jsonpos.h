/*
 * jsonpos: where things are in a JSON text. jansson reports positions only for syntax errors, so
 * the config module indexes the text once more here: every object member and array element gets
 * its path ("cloud.port", "devices[3].topics[0]") mapped to the line and column of its key and
 * of its value. Lines and columns are 1-based; columns count characters (UTF-8 code points) like
 * jansson's do. The tokenizer is tolerant: on text that is not valid JSON it indexes what it
 * can and never reads past the buffer, but positions are only meaningful for valid JSON.
 */
#ifndef ALIGW_JSONPOS_H
#define ALIGW_JSONPOS_H

#include <stddef.h>

struct jsonpos;

struct jsonpos_at {
    int key_line, key_col; /* the member's key; same as the value for array elements and root */
    int val_line, val_col; /* the first character of the value */
};

/* Indexes text[0..len). Returns NULL on allocation failure. text is borrowed for the call. */
struct jsonpos *jsonpos_build(const char *text, size_t len);
void jsonpos_free(struct jsonpos *jp);
/* Looks up a path ("" is the root value). Returns 0, or -ENOENT when the path is not indexed. */
int jsonpos_find(const struct jsonpos *jp, const char *path, struct jsonpos_at *out);

#endif
