/*-------------------------------------------------------------------------
 *
 * httpd.h
 *		GET /metrics and GET /healthz, served by a background worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_HTTPD_H
#define INFRA_HTTPD_H

/* GUCs */
extern char *infra_metrics_listen;

extern void InfraHttpdInit(void);

#endif							/* INFRA_HTTPD_H */
