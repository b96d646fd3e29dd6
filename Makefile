# infra: PostgreSQL extension (PGXS) and the infra-bridge daemon.
#
#   make / make install    build and install infra.so and infra-bridge
#   make deps              install every system package and test tool
#   make test              deps, build, install, then every test against a
#                          throwaway PostgreSQL cluster and a real Kafka broker,
#                          for PostgreSQL 15 and 18 (PG=18: that one only)
#   make run / make stop   a sandbox: PostgreSQL with infra preloaded + Kafka
#   make restart           restart the sandbox's PostgreSQL (keeps ALTER SYSTEM)
#   make bench             benchmarks under test/bench/
#   make deb               Debian packages (postgresql-15-infra, infra-bridge)

EXTENSION = infra
MODULE_big = infra
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c src/*/*.c)))
DATA = $(wildcard sql/infra--*.sql)
PGFILEDESC = "infra - in-database infrastructure"

# make PG=18 (or PG=15): build against one of the PostgreSQL versions infra
# is tested with (make deps installs them; test/lib.sh says where).
# PG_CONFIG=/path/to/pg_config builds against any other installation.
ifdef PG
PG_CONFIG := $(shell test/pg-config.sh $(PG))
endif
PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
# Our own sources build warnings-free or not at all.
PG_CFLAGS = -Werror
SHLIB_LINK = -lrdkafka -lmicrohttpd -lcurl

# make installcheck: the pg_regress and isolation suites against a running
# server with infra in shared_preload_libraries, and a database
# infra_isolation listed in infra.database (the make run sandbox is one), as
# other extensions do.
# make test is the one command that proves everything (it runs these too).
REGRESS = $(sort $(basename $(notdir $(filter-out sql/infra--%,$(wildcard sql/*.sql)))))
ISOLATION = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --inputdir=$(srcdir)/test --use-existing

EXTRA_CLEAN = bridge/infra-bridge bridge/*.o test/mock/mock_cluster output_iso build $(PG_BUILD_STAMP)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# A server built elsewhere (the PostgreSQL 18 wheel) may name warning options
# this machine's gcc does not know (-Wmissing-variable-declarations is gcc
# 14's): drop those, keep the rest.
CFLAGS_UNKNOWN := $(foreach f,$(filter -W%,$(CFLAGS)),$(if $(shell $(CC) $(f) -E -x c /dev/null 2>&1 | grep unrecognized),$(f)))
override CFLAGS := $(filter-out $(CFLAGS_UNKNOWN),$(CFLAGS))

# The isolation specs' database: an infra worker must serve it (PGXS sets
# its own name in Makefile.global, so this comes after the include).
ISOLATION_TESTDB = infra_isolation

# PGXS tracks no header dependencies without --enable-depend: rebuild every
# object when any of our headers changes, or when the server built for is
# another (make PG=18 after make, say): src/.pg-build names it.
PG_BUILD_STAMP = src/.pg-build
$(shell echo '$(PG_CONFIG) $(VERSION)' | cmp -s - $(PG_BUILD_STAMP) || \
	echo '$(PG_CONFIG) $(VERSION)' > $(PG_BUILD_STAMP))
$(OBJS) $(OBJS:.o=.bc): $(wildcard src/*/*.h) $(PG_BUILD_STAMP)

# ---------------------------------------------------------------------------
# infra-bridge: a standalone daemon, built with the server's compiler flags.
BRIDGE_SRCS = $(sort $(wildcard bridge/*.c))
# It is a libpq client, built against the system's libpq (libpq-dev's
# pg_config), whichever server version the extension is built for.
LIBPQ_CONFIG ?= /usr/bin/pg_config
# bridge/json.c parses JSON with PostgreSQL's own parser: the frontend
# libpgcommon and libpgport of the same installation (server headers).
BRIDGE_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L -O2 -g -Wall -Wextra \
	-Wno-unused-parameter -Werror -I$(shell $(LIBPQ_CONFIG) --includedir) \
	-I$(shell $(LIBPQ_CONFIG) --includedir-server)
BRIDGE_LIBS = -lrdkafka -linih -lmicrohttpd -lavro -lcurl -lpthread \
	-L$(shell $(LIBPQ_CONFIG) --pkglibdir) -lpgcommon -lpgport \
	-L$(shell $(LIBPQ_CONFIG) --libdir) -lpq

# WITH_BRIDGE=no: the extension alone (its Debian package; the bridge has
# its own).
WITH_BRIDGE ?= yes
ifeq ($(WITH_BRIDGE),yes)
all: bridge/infra-bridge
install: install-bridge
uninstall: uninstall-bridge
endif

# BRIDGE_EXTRA: more compiler and linker flags (the Debian build's hardening).
bridge/infra-bridge: $(BRIDGE_SRCS) $(wildcard bridge/*.h)
	$(CC) $(BRIDGE_CFLAGS) $(BRIDGE_EXTRA) -o $@ $(BRIDGE_SRCS) $(BRIDGE_LIBS)

# The daemon goes next to PostgreSQL's programs and where users look for
# commands (on PATH).
BRIDGE_BINDIR ?= /usr/local/bin

install-bridge: bridge/infra-bridge
	$(MKDIR_P) '$(DESTDIR)$(bindir)' '$(DESTDIR)$(BRIDGE_BINDIR)'
	$(INSTALL_PROGRAM) bridge/infra-bridge '$(DESTDIR)$(bindir)/infra-bridge'
	$(INSTALL_PROGRAM) bridge/infra-bridge '$(DESTDIR)$(BRIDGE_BINDIR)/infra-bridge'

uninstall-bridge:
	rm -f '$(DESTDIR)$(bindir)/infra-bridge' '$(DESTDIR)$(BRIDGE_BINDIR)/infra-bridge'

# ---------------------------------------------------------------------------
# Test helpers built from C: the librdkafka mock cluster host.
test/mock/mock_cluster: test/mock/mock_cluster.c
	$(CC) -std=c99 -D_POSIX_C_SOURCE=200809L -O1 -g -Wall -Wextra -Werror \
		-o $@ $< -lrdkafka

# ---------------------------------------------------------------------------
# Project targets.
.PHONY: deps test run restart stop bench deb install-bridge uninstall-bridge

deps:
	test/deps.sh

# make test: every tested PostgreSQL version (PG=18 or PG=15: just that one),
# each built and installed from a copy of the sources (test/matrix.sh).
test: deps
	test/matrix.sh $(PG)

# make deb: the Debian packages postgresql-15-infra and infra-bridge
# (debhelper, pg_buildext; lintian must report no error) into DEB_DIR.
DEB_DIR ?= build/deb
deb: deps
	test/deb.sh build $(DEB_DIR)

# make run: dependencies, build and install quietly (the output goes to a
# log, shown when something fails), then the sandbox.
RUN_LOG ?= /tmp/infra-run-build.log
run:
	@echo "== installing dependencies, building and installing infra (log: $(RUN_LOG))"
	@{ test/deps.sh && $(MAKE) all && $(MAKE) install; } >$(RUN_LOG) 2>&1 || \
		{ tail -n 40 $(RUN_LOG); echo "error: the build failed; the whole log is $(RUN_LOG)"; exit 1; }
	@test/sandbox.sh start

restart:
	@test/sandbox.sh restart

stop:
	@test/sandbox.sh stop

bench: all
	$(MAKE) install
	test/bench/run.sh
