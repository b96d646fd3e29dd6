/*-------------------------------------------------------------------------
 *
 * libcurl.h
 *		The one place <curl/curl.h> is included (the trace exporter and the
 *		http worker use libcurl, each from its own process).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_LIBCURL_H
#define INFRA_LIBCURL_H

#include <curl/curl.h>

#endif							/* INFRA_LIBCURL_H */
