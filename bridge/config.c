/*-------------------------------------------------------------------------
 *
 * config.c
 *		infra-bridge configuration: one table of keys with their defaults,
 *		read from an INI file by inih.
 *
 * A file is loaded into a scratch copy and only handed back when all of it is
 * valid, so a reload with a bad file keeps the configuration in force.
 *
 *-------------------------------------------------------------------------
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "bridge.h"

typedef struct ConfigKey
{
	const char *section;
	const char *name;
	size_t		offset;			/* in BridgeConfig */
	const char *default_value;
	bool		secret;			/* never logged */
} ConfigKey;

static const ConfigKey config_keys[] = {
	{"bridge", "conninfo", offsetof(BridgeConfig, conninfo), "dbname=postgres", true},
	{"bridge", "brokers", offsetof(BridgeConfig, brokers), "127.0.0.1:9092", false},
	{"bridge", "group", offsetof(BridgeConfig, group), "infra-bridge", false},
	{"bridge", "log_level", offsetof(BridgeConfig, log_level), "info", false},
};

#define NUM_CONFIG_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

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
	for (i = 0; i < NUM_CONFIG_KEYS; i++)
		snprintf((char *) config + config_keys[i].offset, BRIDGE_VALUE_LEN,
				 "%s", config_keys[i].default_value);
}

/*
 * Keep the first problem of a load; inih supplies its line number.
 */
static int
config_reject(ConfigLoad *load, const char *message, const char *name,
			  const char *section)
{
	if (load->error[0] == '\0')
		snprintf(load->error, sizeof(load->error), message, name, section);
	return 0;
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
	size_t		i;

	for (i = 0; i < NUM_CONFIG_KEYS; i++)
	{
		const ConfigKey *key = &config_keys[i];

		if (strcasecmp(section, key->section) != 0 ||
			strcasecmp(name, key->name) != 0)
			continue;
		if (strlen(value) >= BRIDGE_VALUE_LEN)
			return config_reject(load, "value of \"%s\" in section [%s] is too long",
								 name, section);
		snprintf((char *) load->config + key->offset, BRIDGE_VALUE_LEN,
				 "%s", value);
		log_debug("%s: %s.%s = %s", load->path, section, name,
				  key->secret ? "(secret)" : value);
		return 1;
	}
	return config_reject(load, "unknown key \"%s\" in section [%s]",
						 name, section);
}

/*
 * Check values that have a fixed vocabulary.
 */
static bool
config_validate(const char *path, BridgeConfig *config)
{
	size_t		i;

	for (i = 0; i < sizeof(log_levels) / sizeof(log_levels[0]); i++)
		if (strcmp(config->log_level, log_levels[i]) == 0)
			return true;
	log_error("%s: log_level \"%s\" is not one of error, warning, info, debug",
			  path, config->log_level);
	return false;
}

/*
 * Load path over the defaults.  On success *config is replaced; on failure
 * it is left untouched and every problem has been logged.
 */
bool
config_load(const char *path, BridgeConfig *config)
{
	BridgeConfig scratch;
	ConfigLoad	load;
	int			rc;

	config_set_defaults(&scratch);
	load.path = path;
	load.config = &scratch;
	load.error[0] = '\0';

	rc = ini_parse(path, config_handle_line, &load);
	if (rc == -1)
	{
		log_error("cannot open configuration file \"%s\"", path);
		return false;
	}
	if (rc > 0)
	{
		log_error("%s:%d: %s", path, rc,
				  load.error[0] ? load.error : "syntax error");
		return false;
	}
	if (rc < 0)
	{
		log_error("cannot read configuration file \"%s\"", path);
		return false;
	}
	if (!config_validate(path, &scratch))
		return false;

	*config = scratch;
	return true;
}
