/*-------------------------------------------------------------------------
 *
 * clock.c
 *		Durations given in SQL as intervals, checked and made nanoseconds.
 *
 * Called by every module that takes durations from SQL; no state.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"

#include "core/clock.h"

/*
 * An interval argument as nanoseconds.  Months have no fixed length, so an
 * interval with months is refused, as are negative ones (and zero unless
 * allow_zero).
 */
int64
InfraIntervalToNs(const Interval *span, const char *argname, bool allow_zero)
{
	int64		us;

	if (span->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain months or years", argname),
				 errdetail("Months have no fixed length."),
				 errhint("Give %s in days or smaller units.", argname)));
	if (pg_mul_s64_overflow((int64) span->day, USECS_PER_DAY, &us) ||
		pg_add_s64_overflow(us, span->time, &us) ||
		us > PG_INT64_MAX / NS_PER_US)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", argname),
				 errhint("Give %s as less than 100 years.", argname)));
	if (us < 0 || (us == 0 && !allow_zero))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be %s", argname,
						allow_zero ? "zero or positive" : "positive"),
				 errhint("Give %s as an interval such as '1 second'.", argname)));
	return us * NS_PER_US;
}
