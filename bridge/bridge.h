/*-------------------------------------------------------------------------
 *
 * bridge.h
 *		infra-bridge: consumes Kafka topics into PostgreSQL tables, exactly
 *		once (each batch and its offsets in one transaction).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_H
#define INFRA_BRIDGE_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#define BRIDGE_VERSION "1.2"

/* Longest value of one configuration key, in bytes. */
#define BRIDGE_VALUE_LEN 1024

/* Routes and topic patterns one configuration may have. */
#define BRIDGE_MAX_ROUTES 32
#define BRIDGE_MAX_TOPICS 32

/* Writer threads (and PostgreSQL connections) at most. */
#define BRIDGE_MAX_WRITERS 8

/* Librdkafka properties of the [kafka] section. */
#define BRIDGE_MAX_KAFKA_PROPS 64

typedef enum RouteFormat
{
	FORMAT_JSON,				/* the value into one json/jsonb column */
	FORMAT_JSON_COLUMNS,		/* the value's keys onto columns */
	FORMAT_TEXT,
	FORMAT_BYTEA,
	FORMAT_DEBEZIUM				/* Debezium change events applied to a keyed table */
} RouteFormat;

/*
 * How a Debezium connector encoded what a message's schema does not say:
 * its decimal.handling.mode, time.precision.mode and binary.handling.mode.
 */
typedef enum DebeziumDecimal
{
	DBZ_DECIMAL_PRECISE,		/* bytes of the unscaled value, base64 */
	DBZ_DECIMAL_STRING,
	DBZ_DECIMAL_DOUBLE
} DebeziumDecimal;

typedef enum DebeziumTime
{
	DBZ_TIME_ADAPTIVE,			/* by the column's precision: ms, us */
	DBZ_TIME_ADAPTIVE_US,		/* adaptive_time_microseconds */
	DBZ_TIME_CONNECT,			/* milliseconds */
	DBZ_TIME_ISOSTRING
} DebeziumTime;

typedef enum DebeziumBinary
{
	DBZ_BINARY_BASE64,			/* bytes (as the JSON converter writes them), base64 */
	DBZ_BINARY_BASE64_URL,
	DBZ_BINARY_HEX
} DebeziumBinary;

/* Metadata a route may store next to the value. */
typedef enum RouteMeta
{
	META_TOPIC,
	META_PARTITION,
	META_OFFSET,
	META_KEY,
	META_TIMESTAMP,
	META_HEADERS,
	META_COUNT
} RouteMeta;

/* One [route NAME] section. */
typedef struct BridgeRoute
{
	char		name[64];
	char		topics[BRIDGE_MAX_TOPICS][256];	/* names, or ^regex */
	int			ntopics;
	regex_t		patterns[BRIDGE_MAX_TOPICS];	/* compiled ^regex entries */
	bool		is_pattern[BRIDGE_MAX_TOPICS];
	char		table[256];
	char		handler[256];	/* a function or procedure taking infra.bridge_message[] */
	RouteFormat format;
	bool		shape_set;		/* format or column given */
	char		column[64];		/* json, text, bytea: the value's column */
	char		columns[BRIDGE_VALUE_LEN];	/* json_columns: explicit list */
	bool		upsert;
	bool		mode_set;		/* mode given */
	char		key_columns[BRIDGE_VALUE_LEN];
	char		meta[META_COUNT][64];	/* column per metadata, "" for none */
	bool		dedupe;
	bool		deletes;		/* upsert: a tombstone deletes its key */
	bool		deletes_set;	/* deletes given */
	DebeziumDecimal dbz_decimal;	/* format = debezium, schemaless: */
	DebeziumTime dbz_time;
	DebeziumBinary dbz_binary;
	char		dbz_placeholder[128];	/* unavailable.value.placeholder */
	bool		dbz_set;		/* one of those four given */
	bool		avro;			/* format = avro, or debezium with encoding = avro: Confluent's wire format */
	bool		avro_format;	/* format = avro given */
	bool		avro_encoding;	/* format = debezium, encoding = avro */
	int			batch_size;		/* this route's messages per batch at most */
	int			batch_delay_ms; /* longest one of them waits; 0: [bridge]'s */
} BridgeRoute;

/* The daemon's settings; defaults live in config.c's table. */
typedef struct BridgeConfig
{
	char		conninfo[BRIDGE_VALUE_LEN];	/* libpq connection string */
	char		brokers[BRIDGE_VALUE_LEN];	/* bootstrap.servers */
	char		group[BRIDGE_VALUE_LEN];	/* consumer group id */
	char		log_level[BRIDGE_VALUE_LEN];	/* error|warning|info|debug */
	char		metrics_listen[BRIDGE_VALUE_LEN];	/* host:port, "" for none */
	char		schema_registry[BRIDGE_VALUE_LEN];	/* Confluent-API base URL, "" for none */
	int			batch_size;		/* messages per transaction at most */
	int			batch_bytes;	/* and bytes of keys and values in a batch */
	int			batch_delay_ms; /* longest a message waits for its batch */
	int			writers;		/* threads writing partitions' batches at once */
	char		kafka_keys[BRIDGE_MAX_KAFKA_PROPS][128];
	char		kafka_values[BRIDGE_MAX_KAFKA_PROPS][BRIDGE_VALUE_LEN];
	int			nkafka;
	BridgeRoute routes[BRIDGE_MAX_ROUTES];
	int			nroutes;
} BridgeConfig;

/* Levelled log lines on stderr, one JSON object each. */
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

/* config.c */
extern void config_set_defaults(BridgeConfig *config);
extern bool config_load(const char *path, BridgeConfig *config);
extern void config_free(BridgeConfig *config);
extern int	config_route_for_topic(const BridgeConfig *config, const char *topic);
extern bool config_log_level(const char *name, BridgeLogLevel *level);

/* db.c: the PostgreSQL side */
typedef enum WriteResult
{
	WRITE_OK,
	WRITE_CONFLICT,				/* another consumer moved an offset: reseek */
	WRITE_RETRY					/* connection or server trouble: try again */
} WriteResult;

extern bool db_connect(const BridgeConfig *config, int slot, bool once);
extern void db_disconnect(void);
extern bool db_connected(int slot);
extern bool db_check_routes(const BridgeConfig *config);
extern bool db_load_offsets(const BridgeConfig *config, const char *topic, int32_t partition,
							int64_t *next_offset, char *seek, size_t seeklen, int64_t *seek_ms);
extern bool db_resolve_seek(const BridgeConfig *config, const char *topic, int32_t partition,
							const char *seek, int64_t next);
extern bool db_seek_requested(const BridgeConfig *config);

/* An assigned partition's position, reported to infra.bridge_positions. */
typedef struct BridgePosition
{
	char		topic[256];
	int32_t		partition;
	int64_t		end;			/* high watermark */
	int64_t		oldest_ms;		/* Kafka timestamp of the oldest unwritten; -1: caught up or not known */
	int64_t		expected;		/* the next offset this member expects stored; -1: none */
} BridgePosition;

extern int	db_report_positions(const BridgeConfig *config, const BridgePosition *pos, int n);
/* A partition a batch moves: its offset must still be expected (-1: no row). */
typedef struct PartitionWrite
{
	const char *topic;
	int32_t		partition;
	int64_t		expected;
	int64_t		next;
} PartitionWrite;

extern WriteResult db_write_batch(const BridgeConfig *config, int slot, rd_kafka_message_t **messages,
								  int n, const int *routes, const PartitionWrite *parts, int nparts,
								  long long *written, long long *dead);

/* consume.c: the daemon's loop; returns the exit status. */
extern int	bridge_run(BridgeConfig *config, const char *path);

/* clock.c */
extern int64_t now_ms(void);

/* metrics.c: /metrics and /healthz */
extern bool metrics_start(const char *listen_on);
extern void metrics_stop(void);
extern void metrics_set_routes(const BridgeConfig *config);
extern void metrics_batch(const long long *consumed, const long long *written,
						  const long long *dead, double seconds);
extern void metrics_db_up(bool up);
extern void metrics_lag(rd_kafka_t *rk, int64_t (*next_to_write) (const char *topic, int32_t partition),
						int (*route_of) (const char *topic));
extern void metrics_written(rd_kafka_message_t *const *msgs, const int *routes, int n);
extern int	metrics_positions(BridgePosition *pos, int max);

/* A partition whose message timestamps the probe looks up (-1: not that one). */
typedef struct FreshTarget
{
	char		topic[256];
	int32_t		partition;
	int64_t		next_offset;	/* the oldest not yet written */
	int64_t		newest_offset;	/* the newest on the broker */
} FreshTarget;

extern int	metrics_probe_targets(FreshTarget *targets, int max);
extern void metrics_probe_result(const FreshTarget *t, int64_t next_ts, int64_t newest_ts);

/* fresh.c: the probe thread */
extern bool fresh_start(rd_kafka_conf_t *conf);
extern void fresh_stop(void);

/* Set by signal handlers. */
extern volatile int bridge_stop;
extern volatile int bridge_reload;

#endif							/* INFRA_BRIDGE_H */
