/*
 * http_blast URL N CONCURRENCY: the benchmark's baseline, a plain libcurl
 * multi client sending N POSTs of the http benchmark's shape (a 100-byte
 * JSON body, Content-Type and the three Standard Webhooks headers) with at
 * most CONCURRENCY in flight on keep-alive connections.  Prints the
 * seconds taken and the requests per second.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static size_t
discard(char *p, size_t s, size_t n, void *u)
{
	return s * n;
}

static double
now(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec + tv.tv_usec / 1e6;
}

int
main(int argc, char **argv)
{
	const char *url;
	long		n, conc, started = 0, done = 0, failed = 0;
	char		body[101];
	struct curl_slist *headers = NULL;
	CURLM	   *multi;
	double		t0;
	int			running;

	if (argc != 4)
	{
		fprintf(stderr, "usage: http_blast URL N CONCURRENCY\n");
		return 2;
	}
	url = argv[1];
	n = atol(argv[2]);
	conc = atol(argv[3]);
	memset(body, 'x', 100);
	memcpy(body, "{\"n\": \"", 7);
	memcpy(body + 98, "\"}", 2);
	body[100] = '\0';
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "webhook-id: msg_7716187294513557948_5_1_123456");
	headers = curl_slist_append(headers, "webhook-timestamp: 1796565017");
	headers = curl_slist_append(headers, "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
	headers = curl_slist_append(headers, "Expect:");
	curl_global_init(CURL_GLOBAL_DEFAULT);
	multi = curl_multi_init();
	t0 = now();
	while (done < n)
	{
		CURLMsg    *msg;
		int			left;

		while (started < n && started - done < conc)
		{
			CURL	   *e = curl_easy_init();

			curl_easy_setopt(e, CURLOPT_URL, url);
			curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
			curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
			curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 100L);
			curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
			curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
			curl_multi_add_handle(multi, e);
			started++;
		}
		curl_multi_perform(multi, &running);
		while ((msg = curl_multi_info_read(multi, &left)) != NULL)
		{
			long		code = 0;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
			if (msg->data.result != CURLE_OK || code != 200)
				failed++;
			curl_multi_remove_handle(multi, msg->easy_handle);
			curl_easy_cleanup(msg->easy_handle);
			done++;
		}
		if (done < n)
			curl_multi_wait(multi, NULL, 0, 100, NULL);
	}
	printf("%.3f %.1f %ld\n", now() - t0, n / (now() - t0), failed);
	return failed > 0;
}
