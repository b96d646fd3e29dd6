/*-------------------------------------------------------------------------
 *
 * configrows.c
 *		Who may write a configuration row, and what pg_dump must keep.
 *
 * infra.rate_limiters and infra.circuit_breakers have owners: a row belongs
 * to the role that wrote it (column owner), which may give it to a role it
 * may SET ROLE to; only a role with the owner's privileges (or a superuser)
 * may change or delete it, grants of its use included.  This is the
 * ownership rule PostgreSQL applies to its own objects, applied per row by
 * a row trigger (infra.config_rows()), since the tables are shared by every
 * role with the documented write grant.
 *
 * The rows CREATE EXTENSION makes (presets: the default limiters, breakers,
 * retry policies and metric queries) are not dumped by pg_dump unless they
 * changed: a preset row has preset = true, and the trigger sets changed
 * when anyone but the extension script writes it, so
 * pg_extension_config_dump's filter (NOT preset OR changed) keeps every
 * change.  On restore, CREATE EXTENSION makes the presets again, and a
 * dumped row of the same name replaces the untouched preset (a superuser's
 * insert, as pg_restore's is).  A deleted preset is remembered in
 * infra.removed_presets, which is dumped whole; restoring a row there
 * deletes the untouched preset again.
 *
 * No shared memory.  Called by the row triggers of the configuration tables
 * and of infra.removed_presets.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "core/compat.h"
#include "core/confcache.h"
#include "core/infra.h"
#include "core/spicheck.h"
#include "core/version.h"

PG_FUNCTION_INFO_V1(infra_config_rows);
PG_FUNCTION_INFO_V1(infra_removed_presets_apply);

/* The tables a preset can be removed from (the names the trigger accepts). */
static const char *const preset_tables[] = {
	"rate_limiters", "circuit_breakers", "retry_policies", "metric_queries"
};

/* Set while a restored row replaces its preset: that delete is no removal. */
static bool replacing_preset = false;

/* Set while a delete records its removal: the row goes anyway. */
static bool recording_removal = false;

/* The owner of relation relid. */
static Oid
ConfigRowsRelOwner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Run sql with one text parameter as the owner of relation relid, as a
 * restricted operation (the tables infra writes for its triggers are the
 * extension owner's; the writer need not have rights on them).
 */
static void
ConfigRowsExecAsOwner(Oid relid, const char *sql, const char *arg, int expected)
{
	Oid			save_user;
	int			save_sec;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(arg);
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(ConfigRowsRelOwner(relid),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		SPI_connect();
		SpiCheckResult(SPI_execute_with_args(sql, 1, types, values, NULL, false, 0),
					   expected, sql, 0, NULL);
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_user, save_sec);
	}
	PG_END_TRY();
}

/*
 * May the current user change a row that owner owns?  Errors when not.
 */
static void
ConfigRowsCheckOwner(const char *table, const char *name, Oid owner)
{
	Oid			me = GetUserId();
	char	   *owner_name;

	if (superuser_arg(me) || has_privs_of_role(me, owner))
		return;
	owner_name = GetUserNameFromId(owner, true);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to change \"%s\" of infra.%s", name, table),
			 errdetail("The row belongs to role \"%s\"; only its owner, a role with the owner's privileges or a superuser may change or delete it.",
					   owner_name ? owner_name : "(dropped)"),
			 errhint("Ask its owner, or use a name of your own.")));
}

/*
 * May the current user give a row to owner?  The rule ALTER ... OWNER TO
 * applies: a role it may SET ROLE to.
 */
static void
ConfigRowsCheckNewOwner(const char *table, Oid owner)
{
	Oid			me = GetUserId();

	if (owner == me || superuser_arg(me) || InfraRoleCanSet(me, owner))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("a row of infra.%s can be owned only by a role its writer may SET ROLE to", table),
			 errhint("Leave owner to its default (the role writing the row).")));
}

/* A column's number, which the table must have. */
static int
ConfigRowsColumn(TupleDesc desc, const char *table, const char *column)
{
	int			col = SPI_fnumber(desc, column);

	if (col <= 0)
		elog(ERROR, "infra.%s has no column \"%s\"", table, column);
	return col;
}

/*
 * INSERT: a writer who is not a superuser (and not the extension script)
 * writes neither preset nor another role's row; a row that says preset (a
 * superuser's: pg_restore of a changed preset) replaces the untouched
 * preset of its name.
 */
static HeapTuple
ConfigRowsInsert(Relation rel, HeapTuple tuple, bool owned, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *table = RelationGetRelationName(rel);
	bool		isnull;

	if (creating_extension)
		return tuple;
	if (!superuser())
	{
		int			cols[2];
		Datum		values[2] = {BoolGetDatum(false), BoolGetDatum(true)};
		bool		nulls[2] = {false, false};

		cols[0] = ConfigRowsColumn(desc, table, "preset");
		cols[1] = ConfigRowsColumn(desc, table, "changed");
		tuple = heap_modify_tuple_by_cols(tuple, desc, 2, cols, values, nulls);
	}
	if (owned)
	{
		Datum		owner = heap_getattr(tuple, ConfigRowsColumn(desc, table, "owner"), desc, &isnull);

		if (!isnull)
			ConfigRowsCheckNewOwner(table, DatumGetObjectId(owner));
	}
	/* A restored preset (only a superuser's row can say preset). */
	if (DatumGetBool(heap_getattr(tuple, ConfigRowsColumn(desc, table, "preset"), desc, &isnull)))
	{
		char	   *sql = psprintf("DELETE FROM infra.%s WHERE name OPERATOR(pg_catalog.=) $1"
								   " AND preset AND NOT changed", quote_identifier(table));

		replacing_preset = true;
		PG_TRY();
		{
			ConfigRowsExecAsOwner(RelationGetRelid(rel), sql, name, SPI_OK_DELETE);
		}
		PG_FINALLY();
		{
			replacing_preset = false;
		}
		PG_END_TRY();
	}
	return tuple;
}

/*
 * UPDATE: only the owner's (or a superuser) and to a new owner it may SET
 * ROLE to; the row is changed from now on (pg_dump keeps it), and a writer
 * who is not a superuser cannot make it a preset.
 */
static HeapTuple
ConfigRowsUpdate(Relation rel, HeapTuple old, HeapTuple tuple, bool owned, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *table = RelationGetRelationName(rel);
	int			cols[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bool		isnull;

	if (owned)
	{
		int			col = ConfigRowsColumn(desc, table, "owner");
		Oid			was = DatumGetObjectId(heap_getattr(old, col, desc, &isnull));
		Datum		now = heap_getattr(tuple, col, desc, &isnull);

		ConfigRowsCheckOwner(table, name, was);
		if (!isnull && DatumGetObjectId(now) != was)
			ConfigRowsCheckNewOwner(table, DatumGetObjectId(now));
	}
	if (creating_extension)
		return tuple;
	cols[0] = ConfigRowsColumn(desc, table, "changed");
	values[0] = BoolGetDatum(true);
	cols[1] = ConfigRowsColumn(desc, table, "preset");
	values[1] = heap_getattr(superuser() ? tuple : old, cols[1], desc, &isnull);
	return heap_modify_tuple_by_cols(tuple, desc, 2, cols, values, nulls);
}

/*
 * DELETE: only the owner's; a preset deleted is remembered, so that a
 * restore does not bring it back.
 */
static void
ConfigRowsDelete(Relation rel, HeapTuple old, bool owned, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *table = RelationGetRelationName(rel);
	bool		isnull;
	Oid			removed;

	if (owned)
		ConfigRowsCheckOwner(table, name,
							 DatumGetObjectId(heap_getattr(old, ConfigRowsColumn(desc, table, "owner"), desc, &isnull)));
	if (creating_extension || replacing_preset ||
		!DatumGetBool(heap_getattr(old, ConfigRowsColumn(desc, table, "preset"), desc, &isnull)))
		return;
	removed = get_relname_relid("removed_presets", RelationGetNamespace(rel));
	if (!OidIsValid(removed))
		elog(ERROR, "infra.removed_presets does not exist");
	recording_removal = true;
	PG_TRY();
	{
		ConfigRowsExecAsOwner(removed,
							  psprintf("INSERT INTO infra.removed_presets (table_name, name) VALUES (%s, $1)"
									   " ON CONFLICT DO NOTHING", quote_literal_cstr(table)),
							  name, SPI_OK_INSERT);
	}
	PG_FINALLY();
	{
		recording_removal = false;
	}
	PG_END_TRY();
}

/*
 * infra.config_rows(): BEFORE INSERT OR UPDATE OR DELETE row trigger of the
 * configuration tables; argument 'owned' for the tables whose rows have
 * owners.
 */
Datum
infra_config_rows(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	row;
	bool		owned;
	bool		isnull;
	Datum		name;

	INFRA_CHECK_SCHEMA();
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.config_rows() must be called as a BEFORE row trigger")));
	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	owned = trigdata->tg_trigger->tgnargs > 0 &&
		strcmp(trigdata->tg_trigger->tgargs[0], "owned") == 0;
	row = trigdata->tg_trigtuple;
	name = heap_getattr(row, ConfigRowsColumn(desc, RelationGetRelationName(rel), "name"), desc, &isnull);
	if (isnull)
		return PointerGetDatum(TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ? row :
							   TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : row);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		return PointerGetDatum(ConfigRowsInsert(rel, row, owned, TextDatumGetCString(name)));
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		return PointerGetDatum(ConfigRowsUpdate(rel, row, trigdata->tg_newtuple, owned,
												TextDatumGetCString(name)));
	ConfigRowsDelete(rel, row, owned, TextDatumGetCString(name));
	return PointerGetDatum(row);
}

/*
 * infra.removed_presets_apply(): AFTER INSERT row trigger of
 * infra.removed_presets: the preset named there goes, if untouched (a
 * restore brings the removal back after CREATE EXTENSION made the presets).
 */
Datum
infra_removed_presets_apply(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	bool		isnull;
	char	   *table;
	char	   *name;
	Oid			relid;
	int			i;

	INFRA_CHECK_SCHEMA();
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.removed_presets_apply() must be called as an AFTER INSERT row trigger")));
	desc = RelationGetDescr(trigdata->tg_relation);
	table = TextDatumGetCString(heap_getattr(trigdata->tg_trigtuple, 1, desc, &isnull));
	name = TextDatumGetCString(heap_getattr(trigdata->tg_trigtuple, 2, desc, &isnull));
	for (i = 0; i < lengthof(preset_tables); i++)
		if (strcmp(table, preset_tables[i]) == 0)
			break;
	if (i == lengthof(preset_tables))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not one of infra's configuration tables", table)));
	relid = get_relname_relid(preset_tables[i], RelationGetNamespace(trigdata->tg_relation));
	if (creating_extension || recording_removal || !OidIsValid(relid))
		return PointerGetDatum(NULL);
	ConfigRowsExecAsOwner(relid,
						  psprintf("DELETE FROM infra.%s WHERE name OPERATOR(pg_catalog.=) $1"
								   " AND preset AND NOT changed", quote_identifier(preset_tables[i])),
						  name, SPI_OK_DELETE);
	return PointerGetDatum(NULL);
}
