/*-------------------------------------------------------------------------
 *
 * config.c
 *		The Kafka producer's settings.
 *
 * infra.kafka_brokers, infra.kafka_config (librdkafka properties, or @file),
 * infra.kafka_batch_size and infra.kafka_linger_ms.  infra.kafka_config may
 * hold passwords: librdkafka checks it when it is set, and its value is kept
 * out of SHOW, of every log line (the reload's "changed to", the statement
 * naming it, librdkafka's own refusal quoting it) and of errors.
 *
 * Used by client.c, which builds the producer from these settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/guc.h"

#include "kafka/config.h"

char	   *infra_kafka_brokers = NULL;
char	   *infra_kafka_config = NULL;
int			infra_kafka_batch_size = 10000;
int			infra_kafka_linger_ms = 1;
int			infra_kafka_delivery = KAFKA_DELIVERY_AT_LEAST_ONCE;

static const struct config_enum_entry delivery_options[] = {
	{"at_least_once", KAFKA_DELIVERY_AT_LEAST_ONCE, false},
	{"exactly_once", KAFKA_DELIVERY_EXACTLY_ONCE, false},
	{NULL, 0, false}
};

static emit_log_hook_type prev_emit_log_hook = NULL;

static bool KafkaConfigValid(const char *value, char *errbuf, size_t errlen);
static bool KafkaConfigCheckHook(char **newval, void **extra, GucSource source);
static const char *KafkaConfigShowHook(void);
static bool KafkaNamesConfig(const char *text);
static void KafkaHideConfigInLog(ErrorData *edata);

/*
 * Define the producer's settings and keep infra.kafka_config out of the log.
 */
void
KafkaConfigInit(void)
{
	DefineCustomStringVariable("infra.kafka_brokers",
							   "Kafka bootstrap servers (host:port, comma-separated); empty disables producing.",
							   "Messages queue in infra.kafka_outbox until brokers are set.",
							   &infra_kafka_brokers,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("infra.kafka_config",
							   "librdkafka properties for the producer: key=value pairs separated by semicolons, or @file to read them from a file.",
							   "Checked with librdkafka when set, never shown. Keep secrets in a file: PostgreSQL logs changed settings.",
							   &infra_kafka_config,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   KafkaConfigCheckHook, NULL, KafkaConfigShowHook);
	DefineCustomIntVariable("infra.kafka_batch_size",
							"Outbox rows the worker produces per round (at most 16 MB of keys and values).",
							NULL,
							&infra_kafka_batch_size,
							10000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.kafka_linger_ms",
							"librdkafka linger.ms: how long the producer waits to fill a request.",
							NULL,
							&infra_kafka_linger_ms,
							1, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("infra.kafka_delivery",
							 "How the worker hands messages to Kafka: at_least_once, or exactly_once (each round in a Kafka transaction with its progress).",
							 "exactly_once needs infra.kafka_outbox = wal; consumers must read with isolation.level=read_committed.",
							 &infra_kafka_delivery,
							 KAFKA_DELIVERY_AT_LEAST_ONCE, delivery_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = KafkaHideConfigInLog;
}

/*
 * check_hook of infra.kafka_config: every property must be one librdkafka
 * accepts.  A bad value at reload is refused, so the producer keeps the
 * configuration it has.
 */
static bool
KafkaConfigCheckHook(char **newval, void **extra, GucSource source)
{
	char		errbuf[512];

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (KafkaConfigValid(*newval, errbuf, sizeof(errbuf)))
		return true;
	/* Not PostgreSQL's own message: it would quote the value. */
	GUC_check_errmsg("invalid value for parameter \"infra.kafka_config\"");
	GUC_check_errdetail("%s", errbuf);
	GUC_check_errhint("Give librdkafka producer properties as key=value pairs separated by semicolons, or @file.");
	return false;
}

/*
 * Does text name infra.kafka_config (in any letter case)?
 */
static bool
KafkaNamesConfig(const char *text)
{
	const char *p;

	for (p = text; *p != '\0'; p++)
		if (pg_strncasecmp(p, "kafka_config", strlen("kafka_config")) == 0)
			return true;
	return false;
}

/*
 * emit_log_hook: PostgreSQL logs the new value of every setting a reload
 * changes; for infra.kafka_config, which may hold passwords, only that it
 * changed.  A statement naming it is logged neither by log_statement nor
 * as an error's STATEMENT line.  Installed before infra's JSON log hook,
 * so its lines carry the hidden text too.
 */
static void
KafkaHideConfigInLog(ErrorData *edata)
{
	if (edata->message_id != NULL && edata->message != NULL &&
		strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0 &&
		strstr(edata->message, "\"infra.kafka_config\"") != NULL)
		edata->message = pstrdup("parameter \"infra.kafka_config\" changed to \"(hidden)\"");
	/*
	 * A statement naming it (ALTER SYSTEM SET infra.kafka_config = '...'):
	 * neither log_statement's line nor an error's STATEMENT line shows it.
	 */
	if (debug_query_string != NULL && KafkaNamesConfig(debug_query_string))
	{
		edata->hide_stmt = true;
		if (edata->message_id != NULL && edata->message != NULL &&
			(strstr(edata->message_id, "statement: ") != NULL ||
			 strncmp(edata->message_id, "execute ", 8) == 0) &&
			KafkaNamesConfig(edata->message))
			edata->message = pstrdup("statement: (hidden: it names infra.kafka_config)");
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * show_hook of infra.kafka_config: it may hold passwords.
 */
static const char *
KafkaConfigShowHook(void)
{
	return (infra_kafka_config && infra_kafka_config[0]) ? "(hidden)" : "";
}

/*
 * librdkafka quotes a refused value in its message ("Invalid value \"...\"
 * for configuration property ..."); the value may be a secret.  Replace
 * every copy of value in message (a buffer of size bytes) with "(hidden)".
 */
static void
KafkaHideValue(char *message, size_t size, const char *value)
{
	StringInfoData buf;
	size_t		len = strlen(value);
	const char *p = message;
	const char *hit;

	if (len == 0)
		return;
	initStringInfo(&buf);
	while ((hit = strstr(p, value)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, "(hidden)");
		p = hit + len;
	}
	appendStringInfoString(&buf, p);
	strlcpy(message, buf.data, size);
	pfree(buf.data);
}

/*
 * Apply "key=value; key=value" to conf.  False, with the reason in errbuf,
 * at the first property librdkafka refuses (values are never copied into
 * the reason: they may be secrets).
 */
bool
KafkaConfigApply(rd_kafka_conf_t *conf, const char *value, char *errbuf,
				 size_t errlen)
{
	char	   *copy;
	char	   *item;
	char	   *save = NULL;
	int			position = 0;

	/*
	 * "@path": the properties are in that file, one per line or separated
	 * by semicolons.  PostgreSQL logs every changed setting on reload, so
	 * secrets belong in a file only the server can read.
	 */
	if (value[0] == '@')
	{
		FILE	   *file = AllocateFile(value + 1, "r");
		StringInfoData buf;
		char		line[1024];

		if (file == NULL)
		{
			snprintf(errbuf, errlen, "Cannot read file \"%s\": %m.", value + 1);
			return false;
		}
		initStringInfo(&buf);
		while (fgets(line, sizeof(line), file) != NULL)
		{
			char	   *p = line + strspn(line, " \t");

			if (*p == '#')
				continue;
			appendStringInfo(&buf, "%s;", p);
		}
		FreeFile(file);
		copy = buf.data;
	}
	else
		copy = pstrdup(value);

	for (item = strtok_r(copy, ";\n\r", &save); item != NULL;
		 item = strtok_r(NULL, ";\n\r", &save))
	{
		char	   *eq = strchr(item, '=');
		char	   *name = item;
		char	   *val;
		char		rkerr[256];

		position++;
		while (*name == ' ' || *name == '\t' || *name == '\n')
			name++;
		if (*name == '\0')
			continue;
		if (eq == NULL)
		{
			/* The text may be a password that lost its "name=". */
			snprintf(errbuf, errlen, "Property %d has no \"=\".", position);
			return false;
		}
		*eq = '\0';
		val = eq + 1;
		while (eq > name && (eq[-1] == ' ' || eq[-1] == '\t'))
			*--eq = '\0';
		while (*val == ' ' || *val == '\t')
			val++;
		if (rd_kafka_conf_set(conf, name, val, rkerr, sizeof(rkerr)) != RD_KAFKA_CONF_OK)
		{
			KafkaHideValue(rkerr, sizeof(rkerr), val);
			snprintf(errbuf, errlen, "librdkafka refused property \"%s\": %s", name, rkerr);
			return false;
		}
	}
	pfree(copy);
	return true;
}

/*
 * Is value a configuration librdkafka accepts?  Used by the GUC check hook;
 * no producer is created, nothing talks to the network.
 */
static bool
KafkaConfigValid(const char *value, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	bool		ok = KafkaConfigApply(conf, value, errbuf, errlen);

	rd_kafka_conf_destroy(conf);
	return ok;
}
