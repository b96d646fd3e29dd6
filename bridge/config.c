/*-------------------------------------------------------------------------
 *
 * config.c
 *		infra-bridge configuration: an INI file read by inih.
 *
 *	[bridge]         conninfo, brokers, group, log_level, batch_size,
 *	                 batch_bytes, batch_delay_ms, writers, metrics_listen,
 *	                 schema_registry
 *	[kafka]          librdkafka consumer properties, passed through
 *	[route NAME]     topics, table, format, column, columns, mode,
 *	                 key_columns, dedupe, deletes, *_column (metadata), batch_size,
 *	                 batch_delay_ms (defaults: [bridge]'s); format = debezium:
 *	                 decimal_handling_mode, time_precision_mode,
 *	                 binary_handling_mode, unavailable_value_placeholder,
 *	                 encoding
 *
 * A file is loaded into a scratch copy and only handed back when all of it
 * is valid, so a reload with a bad file keeps the configuration in force.
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "bridge.h"

typedef struct ConfigKey
{
	const char *name;
	size_t		offset;			/* in BridgeConfig */
	const char *default_value;
	bool		secret;			/* never logged */
} ConfigKey;

static const ConfigKey bridge_keys[] = {
	{"conninfo", offsetof(BridgeConfig, conninfo), "dbname=postgres", true},
	{"brokers", offsetof(BridgeConfig, brokers), "127.0.0.1:9092", false},
	{"group", offsetof(BridgeConfig, group), "infra-bridge", false},
	{"log_level", offsetof(BridgeConfig, log_level), "info", false},
	{"metrics_listen", offsetof(BridgeConfig, metrics_listen), "", false},
	{"schema_registry", offsetof(BridgeConfig, schema_registry), "", true},	/* may hold a password */
};

#define NUM_BRIDGE_KEYS (sizeof(bridge_keys) / sizeof(bridge_keys[0]))

static const char *const meta_keys[META_COUNT] = {
	"topic_column", "partition_column", "offset_column", "key_column",
	"timestamp_column", "headers_column"
};

/* State of one load, passed through inih. */
typedef struct ConfigLoad
{
	const char *path;
	BridgeConfig *config;
	char		error[BRIDGE_VALUE_LEN + 128];	/* first problem, if any */
} ConfigLoad;

static const char *const log_levels[] = {"error", "warning", "info", "debug"};

/*
 * Fill config with every key's default.
 */
void
config_set_defaults(BridgeConfig *config)
{
	size_t		i;

	memset(config, 0, sizeof(*config));
	for (i = 0; i < NUM_BRIDGE_KEYS; i++)
		snprintf((char *) config + bridge_keys[i].offset, BRIDGE_VALUE_LEN,
				 "%s", bridge_keys[i].default_value);
	config->batch_size = 50000;
	config->batch_bytes = 64 * 1024 * 1024;
	config->batch_delay_ms = 100;
	config->writers = 2;
}

/*
 * Release what a loaded configuration holds (compiled patterns).
 */
void
config_free(BridgeConfig *config)
{
	int			r;
	int			t;

	for (r = 0; r < config->nroutes; r++)
		for (t = 0; t < config->routes[r].ntopics; t++)
			if (config->routes[r].is_pattern[t])
				regfree(&config->routes[r].patterns[t]);
	config->nroutes = 0;
}

/*
 * Map a log level's name; false if unknown.
 */
bool
config_log_level(const char *name, BridgeLogLevel *level)
{
	size_t		i;

	for (i = 0; i < sizeof(log_levels) / sizeof(log_levels[0]); i++)
		if (strcmp(name, log_levels[i]) == 0)
		{
			*level = (BridgeLogLevel) i;
			return true;
		}
	return false;
}

/*
 * Keep the first problem of a load; inih supplies its line number.
 */
static int
config_reject(ConfigLoad *load, const char *fmt, const char *a, const char *b)
{
	if (load->error[0] == '\0')
		snprintf(load->error, sizeof(load->error), fmt, a, b);
	return 0;
}

static bool
parse_int(const char *value, int min, int max, int *out)
{
	char	   *end;
	long		v = strtol(value, &end, 10);

	if (end == value || *end != '\0' || v < min || v > max)
		return false;
	*out = (int) v;
	return true;
}

/* An SQL identifier, possibly schema-qualified, that we quote ourselves. */
static bool
valid_name(const char *value, bool dotted)
{
	const char *p;

	if (*value == '\0')
		return false;
	for (p = value; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '_' || (dotted && *p == '.')))
			return false;
	return true;
}

/* A comma-separated list of column names. */
static bool
valid_name_list(const char *value)
{
	char		copy[BRIDGE_VALUE_LEN];
	char	   *save = NULL;
	char	   *tok;

	snprintf(copy, sizeof(copy), "%s", value);
	for (tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		if (!valid_name(tok, false))
			return false;
	return value[0] != '\0';
}

/* A route's topics: names, or patterns starting with ^. */
static int
config_route_topics(ConfigLoad *load, BridgeRoute *route, const char *section, const char *value)
{
	char		copy[BRIDGE_VALUE_LEN];
	char	   *save = NULL;
	char	   *tok;

	snprintf(copy, sizeof(copy), "%s", value);
	for (tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
	{
		int			t = route->ntopics;

		if (t >= BRIDGE_MAX_TOPICS || strlen(tok) >= sizeof(route->topics[0]))
			return config_reject(load, "too many or too long topics in section [%s]%s", section, "");
		snprintf(route->topics[t], sizeof(route->topics[t]), "%s", tok);
		route->is_pattern[t] = tok[0] == '^';
		if (route->is_pattern[t] &&
			regcomp(&route->patterns[t], tok, REG_EXTENDED | REG_NOSUB) != 0)
			return config_reject(load, "invalid topic pattern \"%s\" in section [%s]", tok, section);
		route->ntopics++;
	}
	return 1;
}

/*
 * Value s is one of the names (NULL-terminated): its index, or -1.
 */
static int
one_of(const char *s, const char *const *names)
{
	int			i;

	for (i = 0; names[i] != NULL; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

/*
 * A format = debezium key: how the connector encoded what a schemaless
 * message does not say, named after its own settings.
 */
static int
config_debezium_key(ConfigLoad *load, BridgeRoute *route, const char *section,
					const char *name, const char *value)
{
	static const char *const decimal[] = {"precise", "string", "double", NULL};
	static const char *const time[] = {"adaptive", "adaptive_time_microseconds", "connect", "isostring", NULL};
	static const char *const binary[] = {"bytes", "base64", "base64-url-safe", "hex", NULL};
	int			i;

	route->dbz_set = true;

	if (strcasecmp(name, "encoding") == 0)
	{
		if (strcmp(value, "avro") != 0 && strcmp(value, "json") != 0)
			return config_reject(load, "encoding \"%s\" in section [%s] is not one of json, avro", value, section);
		route->avro_encoding = strcmp(value, "avro") == 0;
		return 1;
	}
	if (strcasecmp(name, "decimal_handling_mode") == 0)
	{
		if ((i = one_of(value, decimal)) < 0)
			return config_reject(load, "decimal_handling_mode \"%s\" in section [%s] is not one of precise, string,"
								 " double", value, section);
		route->dbz_decimal = (DebeziumDecimal) i;
		return 1;
	}
	if (strcasecmp(name, "time_precision_mode") == 0)
	{
		if ((i = one_of(value, time)) < 0)
			return config_reject(load, "time_precision_mode \"%s\" in section [%s] is not one of adaptive,"
								 " adaptive_time_microseconds, connect, isostring", value, section);
		route->dbz_time = (DebeziumTime) i;
		return 1;
	}
	if (strcasecmp(name, "binary_handling_mode") == 0)
	{
		if ((i = one_of(value, binary)) < 0)
			return config_reject(load, "binary_handling_mode \"%s\" in section [%s] is not one of bytes, base64,"
								 " base64-url-safe, hex", value, section);
		/* bytes and base64 read alike in JSON */
		route->dbz_binary = i <= 1 ? DBZ_BINARY_BASE64 : i == 2 ? DBZ_BINARY_BASE64_URL : DBZ_BINARY_HEX;
		return 1;
	}
	if (strcasecmp(name, "unavailable_value_placeholder") == 0)
	{
		if (value[0] == '\0' || strlen(value) >= sizeof(route->dbz_placeholder))
			return config_reject(load, "unavailable_value_placeholder \"%s\" in section [%s] is empty or longer than"
								 " 127 bytes", value, section);
		snprintf(route->dbz_placeholder, sizeof(route->dbz_placeholder), "%s", value);
		return 1;
	}
	return config_reject(load, "unknown key \"%s\" in section [%s]", name, section);
}

/*
 * One key of a [route NAME] section.  One branch per key, in the order of
 * the documentation: longer than most functions, kept whole so that the
 * keys read as one table.
 */
static int
config_route_key(ConfigLoad *load, BridgeRoute *route, const char *section,
				 const char *name, const char *value)
{
	int			m;

	if (strcasecmp(name, "topics") == 0)
		return config_route_topics(load, route, section, value);
	if (strcasecmp(name, "table") == 0 || strcasecmp(name, "handler") == 0)
	{
		bool		table = strcasecmp(name, "table") == 0;
		char	   *dest = table ? route->table : route->handler;

		if (!valid_name(value, true) || strlen(value) >= sizeof(route->table))
			return config_reject(load, table ? "invalid table \"%s\" in section [%s]" :
								 "invalid handler \"%s\" in section [%s]", value, section);
		snprintf(dest, sizeof(route->table), "%s", value);
		return 1;
	}
	if (strcasecmp(name, "format") == 0)
	{
		route->shape_set = true;
		route->avro_format = strcmp(value, "avro") == 0;
		if (strcmp(value, "json") == 0)
			route->format = FORMAT_JSON;
		else if (strcmp(value, "json_columns") == 0)
			route->format = FORMAT_JSON_COLUMNS;
		else if (strcmp(value, "text") == 0)
			route->format = FORMAT_TEXT;
		else if (strcmp(value, "bytea") == 0)
			route->format = FORMAT_BYTEA;
		else if (strcmp(value, "debezium") == 0)
			route->format = FORMAT_DEBEZIUM;
		else if (strcmp(value, "avro") == 0)
			route->format = FORMAT_JSON_COLUMNS;	/* as json_columns, once decoded */
		else
			return config_reject(load, "format \"%s\" in section [%s] is not one of json, json_columns, text, bytea,"
								 " debezium, avro", value, section);
		return 1;
	}
	if (strcasecmp(name, "column") == 0)
	{
		route->shape_set = true;
		if (!valid_name(value, false) || strlen(value) >= sizeof(route->column))
			return config_reject(load, "invalid column \"%s\" in section [%s]", value, section);
		snprintf(route->column, sizeof(route->column), "%s", value);
		return 1;
	}
	if (strcasecmp(name, "columns") == 0 || strcasecmp(name, "key_columns") == 0)
	{
		char	   *dest = strcasecmp(name, "columns") == 0 ? route->columns : route->key_columns;

		if (!valid_name_list(value))
			return config_reject(load, "invalid column list \"%s\" in section [%s]", value, section);
		snprintf(dest, BRIDGE_VALUE_LEN, "%s", value);
		return 1;
	}
	if (strcasecmp(name, "mode") == 0)
	{
		if (strcmp(value, "insert") != 0 && strcmp(value, "upsert") != 0)
			return config_reject(load, "mode \"%s\" in section [%s] is not one of insert, upsert", value, section);
		route->upsert = strcmp(value, "upsert") == 0;
		route->mode_set = true;
		return 1;
	}
	if (strcasecmp(name, "batch_size") == 0)
		return parse_int(value, 1, 1000000, &route->batch_size) ? 1 :
			config_reject(load, "batch_size \"%s\" in section [%s] is not an integer from 1 to 1000000", value, section);
	if (strcasecmp(name, "batch_delay_ms") == 0)
		return parse_int(value, 1, 3600000, &route->batch_delay_ms) ? 1 :
			config_reject(load, "batch_delay_ms \"%s\" in section [%s] is not an integer from 1 to 3600000", value, section);
	if (strcasecmp(name, "dedupe") == 0 || strcasecmp(name, "deletes") == 0)
	{
		bool	   *dest = strcasecmp(name, "dedupe") == 0 ? &route->dedupe : &route->deletes;

		if (strcmp(value, "on") != 0 && strcmp(value, "off") != 0)
			return config_reject(load, dest == &route->dedupe ? "dedupe \"%s\" in section [%s] is not on or off" :
								 "deletes \"%s\" in section [%s] is not on or off", value, section);
		*dest = strcmp(value, "on") == 0;
		route->deletes_set |= dest == &route->deletes;
		return 1;
	}
	if (strncasecmp(name, "decimal_", 8) == 0 || strncasecmp(name, "time_", 5) == 0 ||
		strncasecmp(name, "binary_", 7) == 0 || strncasecmp(name, "unavailable_", 12) == 0 ||
		strcasecmp(name, "encoding") == 0)
		return config_debezium_key(load, route, section, name, value);
	for (m = 0; m < META_COUNT; m++)
		if (strcasecmp(name, meta_keys[m]) == 0)
		{
			if (!valid_name(value, false) || strlen(value) >= sizeof(route->meta[m]))
				return config_reject(load, "invalid column \"%s\" in section [%s]", value, section);
			snprintf(route->meta[m], sizeof(route->meta[m]), "%s", value);
			return 1;
		}
	return config_reject(load, "unknown key \"%s\" in section [%s]", name, section);
}

/*
 * inih callback: one key = value line.  Returning 0 makes inih report this
 * line's number from ini_parse.
 */
static int
config_handle_line(void *user, const char *section, const char *name,
				   const char *value)
{
	ConfigLoad *load = (ConfigLoad *) user;
	BridgeConfig *config = load->config;
	size_t		i;

	if (strlen(value) >= BRIDGE_VALUE_LEN)
		return config_reject(load, "value of \"%s\" in section [%s] is too long", name, section);

	if (strcasecmp(section, "bridge") == 0)
	{
		if (strcasecmp(name, "batch_size") == 0)
			return parse_int(value, 1, 1000000, &config->batch_size) ? 1 :
				config_reject(load, "batch_size \"%s\" in section [%s] is not an integer from 1 to 1000000", value, section);
		if (strcasecmp(name, "batch_bytes") == 0)
			return parse_int(value, 65536, 1073741824, &config->batch_bytes) ? 1 :
				config_reject(load, "batch_bytes \"%s\" in section [%s] is not an integer from 65536 to 1073741824", value, section);
		if (strcasecmp(name, "writers") == 0)
			return parse_int(value, 1, BRIDGE_MAX_WRITERS, &config->writers) ? 1 :
				config_reject(load, "writers \"%s\" in section [%s] is not an integer from 1 to 8", value, section);
		if (strcasecmp(name, "batch_delay_ms") == 0)
			return parse_int(value, 0, 3600000, &config->batch_delay_ms) ? 1 :
				config_reject(load, "batch_delay_ms \"%s\" in section [%s] is not an integer from 0 to 3600000", value, section);
		for (i = 0; i < NUM_BRIDGE_KEYS; i++)
		{
			const ConfigKey *key = &bridge_keys[i];

			if (strcasecmp(name, key->name) != 0)
				continue;
			snprintf((char *) config + key->offset, BRIDGE_VALUE_LEN, "%s", value);
			log_debug("%s: %s.%s = %s", load->path, section, name,
					  key->secret ? "(secret)" : value);
			return 1;
		}
		return config_reject(load, "unknown key \"%s\" in section [%s]", name, section);
	}
	if (strcasecmp(section, "kafka") == 0)
	{
		rd_kafka_conf_t *probe = rd_kafka_conf_new();
		char		errstr[512];
		bool		ok = rd_kafka_conf_set(probe, name, value, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK;

		rd_kafka_conf_destroy(probe);
		if (!ok)
			return config_reject(load, "[kafka] %s: %s", name, errstr);
		if (strcmp(name, "enable.auto.commit") == 0 || strcmp(name, "group.id") == 0 ||
			strcmp(name, "bootstrap.servers") == 0 ||
			(strcmp(name, "partition.assignment.strategy") == 0 && strstr(value, "cooperative")))
			return config_reject(load, "[kafka] %s is set by the bridge itself (%s)", name,
								 "brokers and group in [bridge]; eager assignment, offsets in PostgreSQL");
		if (config->nkafka >= BRIDGE_MAX_KAFKA_PROPS || strlen(name) >= sizeof(config->kafka_keys[0]))
			return config_reject(load, "too many or too long properties in section [%s]%s", section, "");
		snprintf(config->kafka_keys[config->nkafka], sizeof(config->kafka_keys[0]), "%s", name);
		snprintf(config->kafka_values[config->nkafka], BRIDGE_VALUE_LEN, "%s", value);
		config->nkafka++;
		return 1;
	}
	if (strncasecmp(section, "route ", 6) == 0)
	{
		const char *rname = section + 6;
		BridgeRoute *route = NULL;
		int			r;

		while (*rname == ' ')
			rname++;
		for (r = 0; r < config->nroutes; r++)
			if (strcmp(config->routes[r].name, rname) == 0)
				route = &config->routes[r];
		if (route == NULL)
		{
			if (config->nroutes >= BRIDGE_MAX_ROUTES || !valid_name(rname, false) ||
				strlen(rname) >= sizeof(route->name))
				return config_reject(load, "invalid or one too many route name \"%s\"%s", rname, "");
			route = &config->routes[config->nroutes++];
			snprintf(route->name, sizeof(route->name), "%s", rname);
			snprintf(route->column, sizeof(route->column), "payload");
			snprintf(route->dbz_placeholder, sizeof(route->dbz_placeholder), "__debezium_unavailable_value");
		}
		return config_route_key(load, route, section, name, value);
	}
	return config_reject(load, "unknown section [%s]%s", section, "");
}


/*
 * libpq quotes pieces of a conninfo it cannot parse ('missing "=" after
 * "..."'), and a piece may be a password that lost its "password=".  Keep
 * quoted words that are connection keywords or punctuation, hide every
 * other one; the
 * result goes to out (size bytes).
 */
static void
hide_conninfo_words(const char *message, char *out, size_t size)
{
	PQconninfoOption *keywords = PQconndefaults();
	size_t		n = 0;
	const char *p = message;

	while (*p != '\0' && n + 16 < size)
	{
		const char *close;
		PQconninfoOption *k;
		bool		keyword = false;

		if (*p != '"' || (close = strchr(p + 1, '"')) == NULL)
		{
			out[n++] = *p++;
			continue;
		}
		for (k = keywords; k != NULL && k->keyword != NULL; k++)
			keyword |= strlen(k->keyword) == (size_t) (close - p - 1) &&
				strncmp(k->keyword, p + 1, close - p - 1) == 0;
		/* Punctuation such as the "=" libpq missed is no secret either. */
		keyword |= strspn(p + 1, "=&?@:/;,") == (size_t) (close - p - 1);
		if (keyword)
			n += (size_t) snprintf(out + n, size - n, "%.*s", (int) (close - p + 1), p);
		else
			n += (size_t) snprintf(out + n, size - n, "\"(hidden)\"");
		if (n >= size)
			n = size - 1;
		p = close + 1;
	}
	out[n] = '\0';
	if (keywords != NULL)
		PQconninfoFree(keywords);
}
/*
 * A handler route takes the messages as they are: nothing that shapes rows
 * for a table applies to it.
 */
static bool
handler_route_ok(const char *path, const BridgeRoute *route)
{
	int			m;
	const char *bad = NULL;

	if (route->upsert || route->key_columns[0] || route->deletes)
		bad = "mode, key_columns and deletes";
	else if (route->columns[0] || route->shape_set)
		bad = "format, column and columns";
	for (m = 0; m < META_COUNT && bad == NULL; m++)
		if (route->meta[m][0] != '\0')
			bad = "metadata columns";
	if (bad == NULL)
		return true;
	log_error("%s: route \"%s\" has a handler: %s do not apply (the handler gets every field of each message)",
			  path, route->name, bad);
	return false;
}

/*
 * A format = debezium route applies change events: an upsert by key (the
 * table's primary key unless key_columns says), deletes on unless set off;
 * the value is no one column's.
 */
static bool
debezium_route_ok(const char *path, const BridgeRoute *route)
{
	const char *bad = NULL;

	if (route->mode_set && !route->upsert)
		bad = "mode = insert (change events are applied by key: mode is upsert)";
	else if (strcmp(route->column, "payload") != 0)
		bad = "column (the event's columns are the table's; columns = lists those written)";
	if (bad == NULL)
		return true;
	log_error("%s: route \"%s\" is format = debezium: %s does not apply", path, route->name, bad);
	return false;
}

/*
 * Checks that need the whole file.
 */
static bool
config_validate(const char *path, BridgeConfig *config)
{
	BridgeLogLevel level;
	PQconninfoOption *opts;
	char	   *err = NULL;
	int			r;

	if (!config_log_level(config->log_level, &level))
	{
		log_error("%s: log_level \"%s\" is not one of error, warning, info, debug",
				  path, config->log_level);
		return false;
	}
	opts = PQconninfoParse(config->conninfo, &err);
	if (opts == NULL)
	{
		char		shown[1024];

		hide_conninfo_words(err ? err : "out of memory", shown, sizeof(shown));
		log_error("%s: invalid conninfo: %s", path, shown);
		PQfreemem(err);
		return false;
	}
	PQconninfoFree(opts);
	if (config->nroutes == 0)
	{
		log_error("%s: no [route NAME] section: nothing to consume", path);
		return false;
	}
	for (r = 0; r < config->nroutes; r++)
	{
		BridgeRoute *route = &config->routes[r];
		int			t;
		int			o;
		int			q;

		if (route->ntopics == 0 || (route->table[0] == '\0') == (route->handler[0] == '\0'))
		{
			log_error("%s: route \"%s\" needs topics, and a table or a handler (not both)", path, route->name);
			return false;
		}
		if (route->handler[0] != '\0' && !handler_route_ok(path, route))
			return false;
		/* Batch limits not given for the route are the [bridge] ones. */
		if (route->batch_size == 0)
			route->batch_size = config->batch_size;
		if (route->batch_delay_ms == 0)
			route->batch_delay_ms = config->batch_delay_ms;
		if (route->format == FORMAT_DEBEZIUM && !debezium_route_ok(path, route))
			return false;
		route->avro = route->avro_format || route->avro_encoding;
		if (route->avro && strncasecmp(config->schema_registry, "http://", 7) != 0 &&
			strncasecmp(config->schema_registry, "https://", 8) != 0)
		{
			log_error("%s: route \"%s\" reads Avro: [bridge] needs schema_registry, the registry's http:// or"
					  " https:// URL", path, route->name);
			return false;
		}
		if (route->format != FORMAT_DEBEZIUM && route->dbz_set)
		{
			log_error("%s: route \"%s\": decimal_handling_mode, time_precision_mode, binary_handling_mode,"
					  " unavailable_value_placeholder and encoding apply to format = debezium only (format = avro"
					  " reads Avro records onto columns)", path, route->name);
			return false;
		}
		if (route->upsert && route->key_columns[0] == '\0' && route->format != FORMAT_DEBEZIUM)
		{
			log_error("%s: route \"%s\" is mode = upsert without key_columns", path, route->name);
			return false;
		}
		if (route->format == FORMAT_DEBEZIUM)
		{
			route->upsert = true;
			route->deletes = route->deletes || !route->deletes_set;
		}
		if (route->deletes && !route->upsert)
		{
			log_error("%s: route \"%s\" has deletes = on without mode = upsert (a tombstone deletes by key_columns)",
					  path, route->name);
			return false;
		}
		for (t = 0; t < route->ntopics; t++)
			for (o = 0; o <= r; o++)
				for (q = 0; q < config->routes[o].ntopics; q++)
					if ((o < r || q < t) && strcmp(config->routes[o].topics[q], route->topics[t]) == 0)
					{
						log_error("%s: topic \"%s\" is in route \"%s\" and route \"%s\"",
								  path, route->topics[t], config->routes[o].name, route->name);
						return false;
					}
	}
	return true;
}

/*
 * Load path over the defaults.  On success *config is replaced; on failure
 * it is left untouched and every problem has been logged.
 */
bool
config_load(const char *path, BridgeConfig *config)
{
	BridgeConfig *scratch = malloc(sizeof(BridgeConfig));
	ConfigLoad	load;
	int			rc;
	bool		ok = false;

	if (scratch == NULL)
	{
		log_error("out of memory");
		return false;
	}
	config_set_defaults(scratch);
	load.path = path;
	load.config = scratch;
	load.error[0] = '\0';

	rc = ini_parse(path, config_handle_line, &load);
	if (rc == -1)
		log_error("cannot open configuration file \"%s\"", path);
	else if (rc > 0)
		log_error("%s:%d: %s", path, rc, load.error[0] ? load.error : "syntax error");
	else if (rc < 0)
		log_error("cannot read configuration file \"%s\"", path);
	else
		ok = config_validate(path, scratch);

	if (ok)
	{
		config_free(config);
		*config = *scratch;
	}
	else
		config_free(scratch);
	free(scratch);
	return ok;
}

/*
 * The route that consumes a topic: the first naming it, else the first
 * whose pattern matches; -1 for none.
 */
int
config_route_for_topic(const BridgeConfig *config, const char *topic)
{
	int			r;
	int			t;

	for (r = 0; r < config->nroutes; r++)
		for (t = 0; t < config->routes[r].ntopics; t++)
			if (!config->routes[r].is_pattern[t] && strcmp(config->routes[r].topics[t], topic) == 0)
				return r;
	for (r = 0; r < config->nroutes; r++)
		for (t = 0; t < config->routes[r].ntopics; t++)
			if (config->routes[r].is_pattern[t] &&
				regexec(&config->routes[r].patterns[t], topic, 0, NULL, 0) == 0)
				return r;
	return -1;
}
