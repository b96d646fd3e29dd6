/*-------------------------------------------------------------------------
 *
 * bridge.h
 *		infra-bridge: consumes Kafka topics into PostgreSQL tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_H
#define INFRA_BRIDGE_H

#include <stdbool.h>

#define BRIDGE_VERSION "1.0"

/* Longest value of one configuration key, in bytes. */
#define BRIDGE_VALUE_LEN 1024

/* The daemon's settings; defaults live in config.c's table. */
typedef struct BridgeConfig
{
	char		conninfo[BRIDGE_VALUE_LEN];	/* libpq connection string */
	char		brokers[BRIDGE_VALUE_LEN];	/* bootstrap.servers */
	char		group[BRIDGE_VALUE_LEN];	/* consumer group id */
	char		log_level[BRIDGE_VALUE_LEN];	/* error|warning|info|debug */
} BridgeConfig;

/* Levelled log lines on stderr. */
typedef enum BridgeLogLevel
{
	BRIDGE_LOG_ERROR = 0,
	BRIDGE_LOG_WARNING,
	BRIDGE_LOG_INFO,
	BRIDGE_LOG_DEBUG
} BridgeLogLevel;

extern BridgeLogLevel bridge_log_level;

extern void bridge_log(BridgeLogLevel level, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));

#define log_error(...) bridge_log(BRIDGE_LOG_ERROR, __VA_ARGS__)
#define log_warning(...) bridge_log(BRIDGE_LOG_WARNING, __VA_ARGS__)
#define log_info(...) bridge_log(BRIDGE_LOG_INFO, __VA_ARGS__)
#define log_debug(...) bridge_log(BRIDGE_LOG_DEBUG, __VA_ARGS__)

extern void config_set_defaults(BridgeConfig *config);
extern bool config_load(const char *path, BridgeConfig *config);

#endif							/* INFRA_BRIDGE_H */
