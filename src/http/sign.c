/*-------------------------------------------------------------------------
 *
 * sign.c
 *		Standard Webhooks signatures.
 *
 * A request to an endpoint with secrets carries webhook-id (the same on
 * every attempt), webhook-timestamp (Unix seconds of this attempt) and
 * webhook-signature: "v1,<base64 HMAC-SHA256>" of "id.timestamp.body", one
 * entry per secret, space-separated, so that receivers can move to a new
 * key while the old one still verifies.  A secret is "whsec_" and the key
 * in base64.
 *
 * And secrets kept out of the server log: an emit_log_hook masks every
 * "whsec_" secret in a message, its detail and context (an INSERT logged by
 * log_statement, a constraint's "Failing row contains"), and a statement
 * naming one is not repeated as an error's STATEMENT line.
 *
 * Lock rules: none.  Called by deliver.c (the worker) and by the
 * http_endpoints checks; the hook by elog.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/resowner.h"

#include "http/http.h"

#define WHSEC_PREFIX "whsec_"
#define WHSEC_KEY_MAX 256

/* HMAC contexts belong to a resource owner; the worker signs outside transactions. */
static ResourceOwner sign_owner = NULL;

/*
 * The key of a secret into key (WHSEC_KEY_MAX bytes); its length, or -1
 * when the secret is not "whsec_" and base64.
 */
static int
HttpSecretKey(const char *secret, uint8 *key)
{
	const char *b64;
	int			len;

	if (strncmp(secret, WHSEC_PREFIX, strlen(WHSEC_PREFIX)) != 0)
		return -1;
	b64 = secret + strlen(WHSEC_PREFIX);
	len = strlen(b64);
	if (len == 0 || pg_b64_dec_len(len) > WHSEC_KEY_MAX)
		return -1;
	return pg_b64_decode((void *) b64, len, (void *) key, WHSEC_KEY_MAX);
}

bool
HttpSecretValid(const char *secret)
{
	uint8		key[WHSEC_KEY_MAX];

	return HttpSecretKey(secret, key) > 0;
}

/* One HMAC-SHA256 of "id.timestamp.body" into mac. */
static void
HttpMac(const uint8 *key, int keylen, const char *msg_id, const char *stamp,
		const char *body, size_t bodylen, uint8 *mac)
{
	ResourceOwner save = CurrentResourceOwner;
	pg_hmac_ctx *ctx;

	if (save == NULL)
	{
		if (sign_owner == NULL)
			sign_owner = ResourceOwnerCreate(NULL, "infra webhook signatures");
		CurrentResourceOwner = sign_owner;
	}
	PG_TRY();
	{
		ctx = pg_hmac_create(PG_SHA256);
		if (ctx == NULL ||
			pg_hmac_init(ctx, key, keylen) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) msg_id, strlen(msg_id)) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) stamp, strlen(stamp)) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) body, bodylen) < 0 ||
			pg_hmac_final(ctx, mac, PG_SHA256_DIGEST_LENGTH) < 0)
			elog(ERROR, "could not compute a webhook signature");
		pg_hmac_free(ctx);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = save;
	}
	PG_END_TRY();
}

/*
 * The webhook-signature header's value for this message under every
 * secret; NULL when a secret is not valid.
 */
char *
HttpSignature(const char *const *secrets, int nsecrets, const char *msg_id,
			  int64 timestamp, const char *body, size_t bodylen)
{
	StringInfoData out;
	char		stamp[32];
	int			i;

	snprintf(stamp, sizeof(stamp), INT64_FORMAT, timestamp);
	initStringInfo(&out);
	for (i = 0; i < nsecrets; i++)
	{
		uint8		key[WHSEC_KEY_MAX];
		uint8		mac[PG_SHA256_DIGEST_LENGTH];
		char		b64[64];
		int			keylen = HttpSecretKey(secrets[i], key);
		int			b64len;

		if (keylen <= 0)
			return NULL;
		HttpMac(key, keylen, msg_id, stamp, body, bodylen, mac);
		b64len = pg_b64_encode((void *) mac, sizeof(mac), b64, sizeof(b64));
		if (b64len < 0)
			elog(ERROR, "could not encode a webhook signature");
		appendStringInfo(&out, "%sv1,%.*s", i > 0 ? " " : "", b64len, b64);
	}
	return out.data;
}

static emit_log_hook_type prev_emit_log_hook = NULL;

/* text with each "whsec_<base64>" as "whsec_(hidden)"; text itself when none. */
static char *
HttpMaskSecrets(char *text)
{
	StringInfoData out;
	const char *p;
	const char *hit;

	if (text == NULL || strstr(text, WHSEC_PREFIX) == NULL)
		return text;
	initStringInfo(&out);
	for (p = text; (hit = strstr(p, WHSEC_PREFIX)) != NULL;)
	{
		const char *end = hit + strlen(WHSEC_PREFIX);

		end += strspn(end, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=");
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, WHSEC_PREFIX "(hidden)");
		p = end;
	}
	appendStringInfoString(&out, p);
	return out.data;
}

static void
HttpHideSecretsInLog(ErrorData *edata)
{
	edata->message = HttpMaskSecrets(edata->message);
	edata->detail = HttpMaskSecrets(edata->detail);
	edata->detail_log = HttpMaskSecrets(edata->detail_log);
	edata->context = HttpMaskSecrets(edata->context);
	edata->internalquery = HttpMaskSecrets(edata->internalquery);
	if (debug_query_string != NULL && strstr(debug_query_string, WHSEC_PREFIX) != NULL)
		edata->hide_stmt = true;
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
HttpSecretsInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = HttpHideSecretsInLog;
}
