/*
 * http_sink PORT: a keep-alive HTTP server for the http benchmark
 * (libmicrohttpd, one epoll thread).  Every request but GET /count is read
 * whole and answered 200 "ok"; GET /count answers how many were, and the
 * time of the last in microseconds ("count last_us").
 */
#include <microhttpd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static atomic_long count;
static atomic_long last_us;

static long
now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec * 1000000L + tv.tv_usec;
}

static enum MHD_Result
answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
	   const char *version, const char *data, size_t *size, void **state)
{
	static int started;
	char		body[64];
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (*state == NULL)
	{
		*state = &started;
		return MHD_YES;
	}
	if (*size > 0)
	{
		*size = 0;
		return MHD_YES;
	}
	if (strcmp(method, "GET") == 0 && strcmp(url, "/count") == 0)
		snprintf(body, sizeof(body), "%ld %ld\n", atomic_load(&count), atomic_load(&last_us));
	else
	{
		atomic_fetch_add(&count, 1);
		atomic_store(&last_us, now_us());
		strcpy(body, "ok");
	}
	r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

int
main(int argc, char **argv)
{
	struct MHD_Daemon *d;

	if (argc != 2)
	{
		fprintf(stderr, "usage: http_sink PORT\n");
		return 2;
	}
	d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TURBO, (unsigned short) atoi(argv[1]),
						 NULL, NULL, answer, NULL,
						 MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 10000,
						 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 600,
						 MHD_OPTION_END);
	if (d == NULL)
	{
		fprintf(stderr, "http_sink: cannot listen on %s\n", argv[1]);
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	pause();
	return 0;
}
