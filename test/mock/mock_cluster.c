/*
 * mock_cluster.c
 *		Host for librdkafka's mock cluster, for fault-injection tests only.
 *
 * Most of infra's Kafka tests run against a real broker.  This host exists
 * for the faults a real broker cannot produce on demand: a given error code on
 * the next N requests of one API, a broker going down, a slow round trip.
 *
 * Usage: mock_cluster [BROKERS]   (default 3)
 * Prints "bootstrap HOST:PORT,..." then reads one command per line:
 *
 *	 produce-error COUNT ERROR		next COUNT Produce requests fail with ERROR
 *	 request-error APIKEY COUNT ERROR	same for any API key (numeric)
 *	 down BROKER_ID / up BROKER_ID	take a broker off the network and back
 *	 rtt BROKER_ID MILLISECONDS		delay that broker's responses
 *	 quit
 *
 * ERROR is a librdkafka error name without the RD_KAFKA_RESP_ERR_ prefix,
 * e.g. MSG_SIZE_TOO_LARGE.  Each command is answered "ok" or "error: why".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* Kafka protocol API key of Produce requests. */
#define API_KEY_PRODUCE 0

static int
error_code(const char *name, rd_kafka_resp_err_t *code)
{
	const struct rd_kafka_err_desc *descs;
	size_t		n;
	size_t		i;

	rd_kafka_get_err_descs(&descs, &n);
	for (i = 0; i < n; i++)
	{
		if (descs[i].name != NULL && strcmp(descs[i].name, name) == 0)
		{
			*code = descs[i].code;
			return 1;
		}
	}
	return 0;
}

static void
push_errors(rd_kafka_mock_cluster_t *mcluster, int api_key, int count,
			const char *name)
{
	rd_kafka_resp_err_t code;
	rd_kafka_resp_err_t *errors;
	int			i;

	if (count <= 0 || count > 100000)
	{
		printf("error: count must be between 1 and 100000\n");
		return;
	}
	if (!error_code(name, &code))
	{
		printf("error: unknown error name \"%s\"\n", name);
		return;
	}
	errors = calloc((size_t) count, sizeof(*errors));
	if (errors == NULL)
	{
		printf("error: out of memory\n");
		return;
	}
	for (i = 0; i < count; i++)
		errors[i] = code;
	rd_kafka_mock_push_request_errors_array(mcluster, (int16_t) api_key,
											(size_t) count, errors);
	free(errors);
	printf("ok\n");
}

int
main(int argc, char **argv)
{
	char		errstr[512];
	char		line[512];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mcluster;
	int			brokers = argc > 1 ? atoi(argv[1]) : 3;

	if (brokers < 1 || brokers > 16)
	{
		fprintf(stderr, "mock_cluster: broker count must be 1..16\n");
		return 2;
	}

	/* The mock cluster lives inside a client instance; this one only hosts it. */
	conf = rd_kafka_conf_new();
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "mock_cluster: %s\n", errstr);
		return 1;
	}
	mcluster = rd_kafka_mock_cluster_new(rk, brokers);
	if (mcluster == NULL)
	{
		fprintf(stderr, "mock_cluster: cannot create the mock cluster\n");
		return 1;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mcluster));

	while (fgets(line, sizeof(line), stdin) != NULL)
	{
		char		name[128];
		int			a,
					b;

		if (sscanf(line, "produce-error %d %127s", &a, name) == 2)
			push_errors(mcluster, API_KEY_PRODUCE, a, name);
		else if (sscanf(line, "request-error %d %d %127s", &a, &b, name) == 3)
			push_errors(mcluster, a, b, name);
		else if (sscanf(line, "down %d", &a) == 1)
			printf(rd_kafka_mock_broker_set_down(mcluster, a) ? "error: no broker %d\n" : "ok\n", a);
		else if (sscanf(line, "up %d", &a) == 1)
			printf(rd_kafka_mock_broker_set_up(mcluster, a) ? "error: no broker %d\n" : "ok\n", a);
		else if (sscanf(line, "rtt %d %d", &a, &b) == 2)
			printf(rd_kafka_mock_broker_set_rtt(mcluster, a, b) ? "error: no broker %d\n" : "ok\n", a);
		else if (strncmp(line, "quit", 4) == 0)
		{
			printf("ok\n");
			break;
		}
		else
			printf("error: unknown command\n");
	}

	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(rk);
	return 0;
}
