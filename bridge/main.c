/*-------------------------------------------------------------------------
 *
 * main.c
 *		infra-bridge command line and logging.
 *
 * The daemon consumes Kafka topics into PostgreSQL tables, exactly once.
 * This is its skeleton: it parses the command line and its configuration
 * file, reports what it would connect to, and exits.
 *
 *-------------------------------------------------------------------------
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <libpq-fe.h>

#include "bridge.h"

BridgeLogLevel bridge_log_level = BRIDGE_LOG_INFO;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

/*
 * One log line on stderr: UTC timestamp, level, message.
 */
void
bridge_log(BridgeLogLevel level, const char *fmt,...)
{
	char		stamp[32];
	time_t		now = time(NULL);
	struct tm	tm;
	va_list		ap;

	if (level > bridge_log_level)
		return;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s infra-bridge %s: ", stamp, level_names[level]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
usage(FILE *out)
{
	fprintf(out,
			"infra-bridge consumes Kafka topics into PostgreSQL tables, exactly once.\n"
			"\n"
			"Usage:\n"
			"  infra-bridge --config FILE\n"
			"\n"
			"Options:\n"
			"  -c, --config FILE   configuration file (INI)\n"
			"  -V, --version       print the version and exit\n"
			"  -h, --help          show this help and exit\n");
}

int
main(int argc, char **argv)
{
	static const struct option options[] = {
		{"config", required_argument, NULL, 'c'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	const char *config_path = NULL;
	BridgeConfig config;
	int			c;
	size_t		i;

	while ((c = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1)
	{
		switch (c)
		{
			case 'c':
				config_path = optarg;
				break;
			case 'V':
				printf("infra-bridge %s (librdkafka %s, libpq %d)\n",
					   BRIDGE_VERSION, rd_kafka_version_str(),
					   PQlibVersion());
				return 0;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return 2;
		}
	}
	if (optind < argc)
	{
		log_error("unexpected argument \"%s\"", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (config_path == NULL)
	{
		log_error("no configuration file given");
		usage(stderr);
		return 2;
	}

	if (!config_load(config_path, &config))
		return 1;
	for (i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(config.log_level, level_names[i]) == 0)
			bridge_log_level = (BridgeLogLevel) i;

	log_info("configuration \"%s\" loaded: brokers %s, group %s",
			 config_path, config.brokers, config.group);
	log_info("no routes to consume yet; exiting");
	return 0;
}
