/*
 * cadir: TLS trust stores looked up on demand. Paho builds one SSL_CTX per connection and
 * loads its trust store into each; given a PEM file (trustStore) it parses every certificate of
 * the file for every device (about 4 KB of heap per certificate, per device, and most of the CPU
 * of a client handshake). Given a hashed CA directory (CApath: one file per certificate named
 * after OpenSSL's subject-name hash), a context reads only the certificate it needs, when a
 * server's chain asks for it. This module turns a configured PEM file into such a directory under
 * the runtime directory, once per distinct content, and hands its path to the session layer.
 *
 * Verification is unchanged: the same certificates are trusted (certificates, "TRUSTED
 * CERTIFICATE" entries with their trust settings, and CRLs are copied), the peer is still
 * verified against them and the host name still checked. A directory is named after the SHA-256
 * of the file's content, so a CA file edited on disk gets a new directory at the next session
 * open (as Paho re-read the file at each connect); directories are removed at start and at
 * close, never while sessions may use them. Loop thread only.
 */
#ifndef ALIGW_CADIR_H
#define ALIGW_CADIR_H

/*
 * Makes root (created 0755 if missing; "<runtime_dir>/ca") the parent of the hashed directories
 * and removes what an earlier run left there. root is copied. 0 or a negative errno.
 */
int cadir_init(const char *root);

/*
 * The hashed CA directory holding pem_path's certificates, built on first use or when the file's
 * identity or modification time changed. *dir is borrowed until cadir_close(). Returns 0,
 * -ENOTCONN before cadir_init(), a negative errno when the file cannot be read or the directory
 * not written, or ALIGW_ECONFIG when the file holds no certificate.
 */
int cadir_get(const char *pem_path, const char **dir);

/* Removes the directories made and forgets them. */
void cadir_close(void);

#endif
