/*-------------------------------------------------------------------------
 *
 * main.c
 *		infra-bridge command line, signals and logging.
 *
 * The daemon consumes Kafka topics into PostgreSQL tables, exactly once
 * (consume.c, db.c).  Log lines are JSON objects on stderr.  SIGTERM and
 * SIGINT stop it cleanly (exit 0); SIGHUP reloads the configuration file.
 *
 *-------------------------------------------------------------------------
 */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"

BridgeLogLevel bridge_log_level = BRIDGE_LOG_INFO;
volatile int bridge_stop = 0;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

/*
 * One log line on stderr: {"ts":..., "level":..., "msg":..., "pid":...}.
 */
void
bridge_log(BridgeLogLevel level, const char *fmt,...)
{
	char		stamp[32];
	char		message[4096];
	char		line[9000];
	struct timespec now;
	struct tm	tm;
	va_list		ap;
	size_t		n = 0;
	const char *p;

	if (level > bridge_log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);

	n = (size_t) snprintf(line, sizeof(line), "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"",
						  stamp, now.tv_nsec / 1000000, level_names[level]);
	for (p = message; *p && n + 8 < sizeof(line) - 64; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '"' || c == '\\')
		{
			line[n++] = '\\';
			line[n++] = (char) c;
		}
		else if (c == '\n')
		{
			/* libpq's messages end in a newline: drop it, escape others. */
			if (p[1] != '\0')
			{
				line[n++] = '\\';
				line[n++] = 'n';
			}
		}
		else if (c < 0x20)
			n += (size_t) snprintf(line + n, 8, "\\u%04x", c);
		else
			line[n++] = (char) c;
	}
	n += (size_t) snprintf(line + n, sizeof(line) - n, "\",\"pid\":%d}\n", (int) getpid());
	fwrite(line, 1, n, stderr);
	fflush(stderr);
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
			"  -t, --check-config  check the configuration file and exit\n"
			"  -V, --version       print the version and exit\n"
			"  -h, --help          show this help and exit\n"
			"\n"
			"Signals: TERM/INT stop after the current batch; HUP reloads FILE.\n");
}

static void
on_stop(int sig)
{
	bridge_stop = 1;
}

static void
on_hup(int sig)
{
	bridge_reload = 1;
}

int
main(int argc, char **argv)
{
	static const struct option options[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", no_argument, NULL, 't'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	static BridgeConfig config;
	const char *config_path = NULL;
	bool		check_only = false;
	struct sigaction sa;
	int			c;

	while ((c = getopt_long(argc, argv, "c:tVh", options, NULL)) != -1)
	{
		switch (c)
		{
			case 'c':
				config_path = optarg;
				break;
			case 't':
				check_only = true;
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

	config_set_defaults(&config);
	if (!config_load(config_path, &config))
		return 1;
	(void) config_log_level(config.log_level, &bridge_log_level);
	if (check_only)
	{
		printf("configuration \"%s\" is valid: %d routes, group \"%s\", brokers %s\n",
			   config_path, config.nroutes, config.group, config.brokers);
		return 0;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	srand((unsigned) getpid() ^ (unsigned) time(NULL));

	log_info("infra-bridge %s starting with \"%s\"", BRIDGE_VERSION, config_path);
	if (!metrics_start(config.metrics_listen))
		return 1;
	c = bridge_run(&config, config_path);
	metrics_stop();
	return c;
}
