/*-------------------------------------------------------------------------
 *
 * sqlstate.c
 *		SQLSTATE codes and patterns ('40001', '08%') given in SQL.
 *
 * Called by breaker.c and retry.c; no state.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "core/sqlstate.h"

PG_FUNCTION_INFO_V1(infra_sqlstate_patterns_valid);

/*
 * A pattern is a full five-character SQLSTATE, or a prefix of 0..4
 * characters followed by %.  Characters are digits and upper-case letters.
 */
bool
SqlstatePatternValid(const char *pattern)
{
	int			len = strlen(pattern);
	int			i;

	if (len == 0 || len > 5)
		return false;
	for (i = 0; i < len; i++)
	{
		char		c = pattern[i];

		if (c == '%' && i == len - 1)
			return true;
		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')))
			return false;
	}
	return len == 5;
}

/*
 * Read a text[] of patterns, raising a clear error for a bad one.
 */
void
SqlstateListFromArray(ArrayType *array, const char *what, SqlstateList *list)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	list->count = 0;
	if (array == NULL)
		return;
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n > SQLSTATE_LIST_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s lists %d SQLSTATE patterns, more than %d",
						what, n, SQLSTATE_LIST_MAX),
				 errhint("Use class patterns such as '08%%' to cover many codes.")));
	for (i = 0; i < n; i++)
	{
		char	   *pattern;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s contains a NULL SQLSTATE pattern", what)));
		pattern = TextDatumGetCString(elems[i]);
		if (!SqlstatePatternValid(pattern))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid SQLSTATE pattern \"%s\" in %s", pattern, what),
					 errhint("Give five characters such as '40001', or a class prefix followed by %%, such as '08%%'.")));
		strlcpy(list->patterns[list->count++], pattern, 6);
	}
}

/*
 * Does the error code match any pattern of the list?
 */
bool
SqlstateListMatches(const SqlstateList *list, int sqlerrcode)
{
	const char *code = unpack_sql_state(sqlerrcode);
	int			i;

	for (i = 0; i < list->count; i++)
	{
		const char *p = list->patterns[i];
		int			j;

		for (j = 0; j < 5; j++)
		{
			if (p[j] == '%')
				return true;
			if (p[j] != code[j])
				break;
		}
		if (j == 5)
			return true;
	}
	return false;
}

/*
 * A single five-character SQLSTATE given as text, as an error code.
 */
int
SqlstateParse(const char *text, const char *what)
{
	if (strlen(text) != 5 || strchr(text, '%') != NULL || !SqlstatePatternValid(text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid SQLSTATE \"%s\" for %s", text, what),
				 errhint("Give five digits or upper-case letters, such as '40001'.")));
	return MAKE_SQLSTATE(text[0], text[1], text[2], text[3], text[4]);
}

/*
 * infra.sqlstate_patterns_valid(text[]): for CHECK constraints of the
 * configuration tables.
 */
Datum
infra_sqlstate_patterns_valid(PG_FUNCTION_ARGS)
{
	SqlstateList list;

	SqlstateListFromArray(PG_GETARG_ARRAYTYPE_P(0), "the list", &list);
	PG_RETURN_BOOL(true);
}
