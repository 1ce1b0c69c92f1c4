# turbovec: PGXS build.  `make && make install`; `make installcheck` runs
# pg_regress against a running server, `make prove_installcheck` the TAP
# tests.  SIMD kernels are compiled with target attributes and picked at run
# time, so no -march flag belongs here.

EXTENSION = turbovec
EXTVERSION = 0.3.0
PGVECTOR_EXTVERSION = 0.2.0

MODULE_big = turbovec
OBJS = \
	src/turbovec.o \
	src/tvbuild.o \
	src/tvcodec.o \
	src/tvfuncs.o \
	src/tvinsert.o \
	src/tvivf.o \
	src/tvkernels.o \
	src/tvpage.o \
	src/tvparallel.o \
	src/tvresident.o \
	src/tvscan.o \
	src/tvsecurity.o \
	src/tvsnapshot.o \
	src/tvsnapshotio.o \
	src/tvvacuum.o \
	src/tvvector.o \
	src/tvworker.o

HEADERS = src/turbovec.h src/tvcodec.h

# turbovec_pgvector: operator classes for pgvector's vector and halfvec
# types, a second extension so that turbovec itself never requires pgvector.
# Its 0.1.0 script stays installed so that the tests can create 0.1.0 and
# update it (t/011_halfvec.pl).
# Upgrade scripts: one per release step, so ALTER EXTENSION ... UPDATE
# reaches the current version from any earlier release.
DATA = $(EXTENSION)--$(EXTVERSION).sql $(wildcard $(EXTENSION)--*--*.sql) \
	turbovec_pgvector--0.1.0.sql \
	turbovec_pgvector--$(PGVECTOR_EXTVERSION).sql \
	$(wildcard turbovec_pgvector--*--*.sql) turbovec_pgvector.control

TESTS = $(sort $(wildcard sql/*.sql))
REGRESS = $(patsubst sql/%.sql,%,$(TESTS))
REGRESS_OPTS = --inputdir=. --load-extension=$(EXTENSION)

TAP_TESTS = 1

PG_CONFIG ?= $(shell command -v pg_config 2>/dev/null || echo /usr/lib/postgresql/15/bin/pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs)

# Codes must not depend on fused multiply-adds the compiler may introduce.
PG_CFLAGS += -ffp-contract=off -Wmissing-prototypes -Wvla
ifdef TV_WERROR
PG_CFLAGS += -Werror
endif

include $(PGXS)

# PGXS tracks no header dependencies
$(OBJS): src/turbovec.h src/tvcodec.h src/tvresident.h src/tvsnapshot.h
