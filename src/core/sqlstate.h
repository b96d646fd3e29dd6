/*-------------------------------------------------------------------------
 *
 * sqlstate.h
 *		SQLSTATE lists with patterns, as breakers and retry policies use.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_SQLSTATE_H
#define INFRA_SQLSTATE_H

#include "utils/array.h"

/* Most patterns one list may hold. */
#define SQLSTATE_LIST_MAX 32

/* A checked list: each pattern is 1..5 characters, a trailing % matches any. */
typedef struct SqlstateList
{
	int			count;
	char		patterns[SQLSTATE_LIST_MAX][6];
} SqlstateList;

extern bool SqlstatePatternValid(const char *pattern);
extern void SqlstateListFromArray(ArrayType *array, const char *what,
								  SqlstateList *list);
extern bool SqlstateListMatches(const SqlstateList *list, int sqlerrcode);
extern int	SqlstateParse(const char *text, const char *what);

#endif							/* INFRA_SQLSTATE_H */
