/*-------------------------------------------------------------------------
 *
 * guard.c
 *		Which addresses the http worker may connect to (SSRF protection).
 *
 * Every address a request's host resolves to is checked when libcurl opens
 * the socket, and the peer's address again before each request, also on a
 * reused connection (deliver.c's callbacks).  Refused unless the allow list
 * (infra.http_allow, set by a superuser: CIDRs and host names) permits
 * them: loopback, private, shared (CGNAT), link-local, benchmarking,
 * multicast, reserved, unique-local, unspecified, IPv4-mapped and NAT64
 * IPv6.  The cloud metadata addresses are refused always, allow list or
 * not.  Addresses are compared as bytes after resolution, so 127.1,
 * 2130706433 and 0x7f.1 are all 127.0.0.1 here.
 *
 * Lock rules: none; the worker's own memory.  Called by deliver.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "http/http.h"

#define HTTP_ALLOW_MAX 64
#define HTTP_HOST_MAX 256

typedef struct HttpCidr
{
	int			family;			/* AF_INET or AF_INET6 */
	uint8		addr[16];
	int			bits;
} HttpCidr;

struct HttpAllowList
{
	int			ncidrs;
	HttpCidr	cidrs[HTTP_ALLOW_MAX];
	int			nhosts;
	char		hosts[HTTP_ALLOW_MAX][HTTP_HOST_MAX];
};

/* Ranges refused unless allowed; the prefix's bytes, its length in bits, a name. */
typedef struct HttpRange
{
	int			family;
	const char *prefix;
	int			bits;
	const char *what;
} HttpRange;

static const HttpRange refused_ranges[] = {
	{AF_INET, "0.0.0.0", 8, "\"this network\" (0.0.0.0/8)"},
	{AF_INET, "10.0.0.0", 8, "private (10.0.0.0/8)"},
	{AF_INET, "100.64.0.0", 10, "shared address space (100.64.0.0/10)"},
	{AF_INET, "127.0.0.0", 8, "loopback (127.0.0.0/8)"},
	{AF_INET, "169.254.0.0", 16, "link-local (169.254.0.0/16)"},
	{AF_INET, "172.16.0.0", 12, "private (172.16.0.0/12)"},
	{AF_INET, "192.0.0.0", 24, "IETF protocol assignments (192.0.0.0/24)"},
	{AF_INET, "192.168.0.0", 16, "private (192.168.0.0/16)"},
	{AF_INET, "198.18.0.0", 15, "benchmarking (198.18.0.0/15)"},
	{AF_INET, "224.0.0.0", 4, "multicast (224.0.0.0/4)"},
	{AF_INET, "240.0.0.0", 4, "reserved (240.0.0.0/4)"},
	{AF_INET6, "::", 128, "unspecified (::)"},
	{AF_INET6, "::1", 128, "loopback (::1)"},
	{AF_INET6, "::ffff:0:0", 96, "IPv4-mapped (::ffff:0:0/96)"},
	{AF_INET6, "64:ff9b::", 96, "NAT64 (64:ff9b::/96)"},
	{AF_INET6, "fc00::", 7, "unique-local (fc00::/7)"},
	{AF_INET6, "fe80::", 10, "link-local (fe80::/10)"},
	{AF_INET6, "ff00::", 8, "multicast (ff00::/8)"},
};

/* IPv4-mapped IPv6: its IPv4 address is checked as well. */
static const HttpRange mapped_range = {AF_INET6, "::ffff:0:0", 96, "IPv4-mapped"};

/* Refused always: the cloud metadata services. */
static const HttpRange metadata_addresses[] = {
	{AF_INET, "169.254.169.254", 32, "a cloud metadata address"},
	{AF_INET, "169.254.170.2", 32, "a cloud metadata address"},
	{AF_INET, "100.100.100.200", 32, "a cloud metadata address"},
	{AF_INET6, "fd00:ec2::254", 128, "a cloud metadata address"},
};

static bool
HttpPrefixMatch(const uint8 *addr, const uint8 *prefix, int bits)
{
	int			full = bits / 8;
	int			rest = bits % 8;

	if (memcmp(addr, prefix, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((addr[full] ^ prefix[full]) & (0xff << (8 - rest))) == 0;
}

static bool
HttpInRange(int family, const uint8 *addr, const HttpRange *range)
{
	uint8		prefix[16];

	if (family != range->family)
		return false;
	if (inet_pton(family, range->prefix, prefix) != 1)
		elog(ERROR, "bad built-in address range %s", range->prefix);
	return HttpPrefixMatch(addr, prefix, range->bits);
}

static bool
HttpAllowedCidr(const HttpAllowList *list, int family, const uint8 *addr)
{
	int			i;

	for (i = 0; list != NULL && i < list->ncidrs; i++)
		if (list->cidrs[i].family == family &&
			HttpPrefixMatch(addr, list->cidrs[i].addr, list->cidrs[i].bits))
			return true;
	return false;
}

/*
 * Parse infra.http_allow: entries separated by commas or spaces, each a
 * CIDR (10.1.0.0/16, fd00::/8), an address (127.0.0.1) or a host name
 * (hooks.internal).  NULL with why on a bad entry.
 */
HttpAllowList *
HttpAllowListParse(const char *value, char *why, size_t whylen)
{
	HttpAllowList *list = palloc0(sizeof(HttpAllowList));
	char	   *copy = pstrdup(value ? value : "");
	char	   *save = NULL;
	char	   *tok;

	for (tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save))
	{
		char	   *slash = strchr(tok, '/');
		HttpCidr	c;
		int			max;

		if (slash)
			*slash = '\0';
		c.family = strchr(tok, ':') ? AF_INET6 : AF_INET;
		max = c.family == AF_INET ? 32 : 128;
		if (inet_pton(c.family, tok, c.addr) == 1)
		{
			char	   *end = NULL;

			c.bits = slash ? (int) strtol(slash + 1, &end, 10) : max;
			if ((slash && (end == slash + 1 || *end != '\0')) || c.bits < 0 || c.bits > max ||
				list->ncidrs >= HTTP_ALLOW_MAX)
			{
				snprintf(why, whylen, "\"%s/%s\" is not a valid CIDR (or too many entries)",
						 tok, slash ? slash + 1 : "");
				return NULL;
			}
			list->cidrs[list->ncidrs++] = c;
			continue;
		}
		if (slash || strlen(tok) >= HTTP_HOST_MAX || list->nhosts >= HTTP_ALLOW_MAX ||
			strspn(tok, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != strlen(tok))
		{
			snprintf(why, whylen, "\"%s\" is neither an address, a CIDR nor a host name", tok);
			return NULL;
		}
		strlcpy(list->hosts[list->nhosts++], tok, HTTP_HOST_MAX);
	}
	return list;
}

/*
 * Is this URL host named in the allow list (letter case ignored)?
 */
bool
HttpAllowedHost(const HttpAllowList *list, const char *host)
{
	int			i;

	for (i = 0; list != NULL && i < list->nhosts; i++)
		if (pg_strcasecmp(list->hosts[i], host) == 0)
			return true;
	return false;
}

/*
 * May the worker connect to family/addr (network byte order)?  The host's
 * name being allowed opens every range but the metadata addresses.
 */
static bool
HttpBytesAllowed(const HttpAllowList *list, int family, const uint8 *addr,
				 bool host_allowed, char *why, size_t whylen)
{
	char		text[INET6_ADDRSTRLEN];
	int			i;

	inet_ntop(family, addr, text, sizeof(text));
	for (i = 0; i < lengthof(metadata_addresses); i++)
		if (HttpInRange(family, addr, &metadata_addresses[i]))
		{
			snprintf(why, whylen, "address %s refused: %s", text, metadata_addresses[i].what);
			return false;
		}
	/* An IPv4-mapped address is checked as the IPv4 address too. */
	if (family == AF_INET6 && HttpInRange(family, addr, &mapped_range))
	{
		if (!HttpBytesAllowed(list, AF_INET, addr + 12, host_allowed, why, whylen))
			return false;
	}
	if (host_allowed || HttpAllowedCidr(list, family, addr))
		return true;
	for (i = 0; i < lengthof(refused_ranges); i++)
		if (HttpInRange(family, addr, &refused_ranges[i]))
		{
			snprintf(why, whylen, "address %s refused: %s, not in infra.http_allow",
					 text, refused_ranges[i].what);
			return false;
		}
	return true;
}

bool
HttpAddressAllowed(const HttpAllowList *list, const struct sockaddr *sa,
				   bool host_allowed, char *why, size_t whylen)
{
	if (sa->sa_family == AF_INET)
		return HttpBytesAllowed(list, AF_INET,
								(const uint8 *) &((const struct sockaddr_in *) sa)->sin_addr,
								host_allowed, why, whylen);
	if (sa->sa_family == AF_INET6)
		return HttpBytesAllowed(list, AF_INET6,
								(const uint8 *) &((const struct sockaddr_in6 *) sa)->sin6_addr,
								host_allowed, why, whylen);
	snprintf(why, whylen, "address family %d refused", sa->sa_family);
	return false;
}

/*
 * The same for an address as text (libcurl's CURLINFO_PRIMARY_IP).
 */
bool
HttpAddressTextAllowed(const HttpAllowList *list, const char *ip,
					   bool host_allowed, char *why, size_t whylen)
{
	uint8		addr[16];

	if (inet_pton(AF_INET, ip, addr) == 1)
		return HttpBytesAllowed(list, AF_INET, addr, host_allowed, why, whylen);
	if (inet_pton(AF_INET6, ip, addr) == 1)
		return HttpBytesAllowed(list, AF_INET6, addr, host_allowed, why, whylen);
	snprintf(why, whylen, "peer address \"%s\" refused: not an IP address", ip);
	return false;
}
