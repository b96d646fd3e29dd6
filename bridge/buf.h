/*-------------------------------------------------------------------------
 *
 * buf.h
 *		infra-bridge: a growable buffer of bytes or text.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BRIDGE_BUF_H
#define BRIDGE_BUF_H

#include <stddef.h>

/* A growable buffer for COPY data and SQL text. */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

extern void buf_reserve(Buf *b, size_t more);
extern void buf_append(Buf *b, const char *s, size_t n);
extern void buf_puts(Buf *b, const char *s);
extern void buf_printf(Buf *b, const char *fmt,...) __attribute__((format(printf, 2, 3)));

#endif							/* BRIDGE_BUF_H */
