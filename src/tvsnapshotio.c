/*
 * tvsnapshotio.c
 *	  Backend side of .tv snapshots: where the files live, the atomic write,
 *	  and the bounded read.  Parsing and sealing are in tvsnapshot.c.
 *
 * Files are $PGDATA/pgsql_tmp_turbovec/<dboid>_<indexoid>.tv, names built
 * here from two OIDs and never from user input.  The directory name starts
 * with "pgsql_tmp" so pg_basebackup leaves it out of base backups; start-up
 * only empties base/pgsql_tmp and the tablespaces' pgsql_tmp directories,
 * so snapshots survive a restart.
 *
 * Invariants: a .tv file is only ever created by durable_rename of a fully
 * written and fsynced <name>.tmp, so a reader sees a whole old file or a
 * whole new one, never a partial one.  Callers serialize writers of the
 * same index (the worker allows one dump in flight per index).  Nothing here
 * raises an ERROR for a file problem: the writer reports one WARNING and
 * returns false, the reader returns the reason for its caller's WARNING.
 * Relative paths resolve against the data directory, the cwd of every
 * backend and worker.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nodes/pg_list.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/memutils.h"

#include "tvsnapshot.h"

/* Largest single read() or write(): below every platform's per-call limit */
#define TV_IO_CHUNK		((Size) 1 << 30)

/* A snapshot's body is read in pieces of this size, asking stop before each */
#define TV_READ_PIECE	((uint64) 256 * 1024)

/* The standard CRC-32C check value of "123456789" */
#define TV_CRC32C_CHECK	0xE3069283u

/* PostgreSQL's CRC-32C (SSE 4.2 / ARMv8 when the CPU has it) as a TvCrc32cFunc */
static uint32_t
ServerCrc32c(uint32_t crc, const void *data, size_t len)
{
	pg_crc32c	c = crc;

	COMP_CRC32C(c, data, len);
	return c;
}

/*
 * Let tvsnapshot.c use the server's CRC-32C, which is many times faster than
 * the portable table, once it has given the standard check value (both
 * compute the same CRC; the test keeps a broken build on the portable one).
 */
static void
UseServerCrc32c(void)
{
	static bool checked = false;
	uint32_t	crc = TV_CRC32C_INIT;

	if (checked)
		return;
	checked = true;
	crc = ServerCrc32c(crc, "123456789", 9);
	if (TV_CRC32C_FINISH(crc) == TV_CRC32C_CHECK)
		tv_snapshot_crc32c = ServerCrc32c;
}

/* Relative path of the snapshot of (dboid, indexoid); path holds MAXPGPATH */
void
TvSnapshotPath(uint32 dboid, uint32 indexoid, char *path)
{
	snprintf(path, MAXPGPATH, "%s/%u_%u.tv", TV_SNAPSHOT_DIR, dboid, indexoid);
}

/* write() all of data, in chunks; false with errno set (ENOSPC for a short write) */
static bool
WriteAll(int fd, const char *data, uint64 len)
{
	while (len > 0)
	{
		size_t		chunk = (size_t) Min(len, (uint64) TV_IO_CHUNK);
		ssize_t		n;

		errno = 0;
		n = write(fd, data, chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			if (errno == 0)
				errno = ENOSPC;
			return false;
		}
		data += n;
		len -= (uint64) n;
	}
	return true;
}

/* read() up to len bytes; returns the count (short at end of file) or -1 with errno */
static int64
ReadAll(int fd, char *data, uint64 len)
{
	uint64		done = 0;

	while (done < len)
	{
		size_t		chunk = (size_t) Min(len - done, (uint64) TV_IO_CHUNK);
		ssize_t		n = read(fd, data + done, chunk);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		done += (uint64) n;
	}
	return (int64) done;
}

/*
 * ReadAll in pieces of TV_READ_PIECE bytes, asking stop (when given) before
 * each: if it says so, sets *stopped and returns the bytes read so far
 */
static int64
ReadStoppable(int fd, char *data, uint64 len, TvSnapshotStopFunc stop, void *stop_arg,
			  bool *stopped)
{
	uint64		done = 0;

	while (done < len)
	{
		uint64		piece = Min(len - done, TV_READ_PIECE);
		int64		n;

		if (stop != NULL && stop(stop_arg))
		{
			*stopped = true;
			break;
		}
		n = ReadAll(fd, data + done, piece);
		if (n < 0)
			return -1;
		done += (uint64) n;
		if ((uint64) n < piece)
			break;				/* end of file */
	}
	return (int64) done;
}

/*
 * Create the snapshot directory on first use, with the server's directory
 * mode, and fsync the data directory so the new entry survives a crash.
 */
static bool
EnsureSnapshotDir(void)
{
	struct stat st;
	int			fd;

	if (stat(TV_SNAPSHOT_DIR, &st) == 0 && S_ISDIR(st.st_mode))
		return true;
	if (MakePGDirectory(TV_SNAPSHOT_DIR) < 0 && errno != EEXIST)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", TV_SNAPSHOT_DIR)));
		return false;
	}
	fd = OpenTransientFile(".", O_RDONLY | PG_BINARY);
	if (fd < 0 || (pg_fsync(fd) != 0 && errno != EBADF && errno != EINVAL))
	{
		int			save_errno = errno;

		if (fd >= 0)
			CloseTransientFile(fd);
		errno = save_errno;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not fsync the data directory after creating \"%s\": %m",
						TV_SNAPSHOT_DIR)));
		return false;
	}
	CloseTransientFile(fd);
	return true;
}

/* Close fd (if open) and unlink the temp file, keeping errno for the report */
static void
DiscardTemp(int fd, const char *tmppath)
{
	int			save_errno = errno;

	if (fd >= 0)
		CloseTransientFile(fd);
	unlink(tmppath);
	errno = save_errno;
}

/*
 * Write a snapshot atomically: <path>.tmp, fsync, close, durable_rename.
 * hdr's identity and shape fields must be filled; the derived fields and the
 * CRCs are computed here on a copy (tv_snapshot_seal), so stream and refines
 * must not change during the call.  On failure: one WARNING, no temp file
 * left, any older snapshot untouched, false.  *size gets the file size.
 */
bool
TvSnapshotWrite(const TvSnapshotHeader *hdr, const char *stream,
				const char *refines, Size *size)
{
	TvSnapshotHeader h = *hdr;
	uint8		raw[TV_SNAPSHOT_HEADER_BYTES];
	char		path[MAXPGPATH];
	char		tmppath[MAXPGPATH];
	int			fd;

	*size = 0;
	UseServerCrc32c();
	tv_snapshot_seal(&h, (const uint8 *) stream, (const uint8 *) refines);
	tv_snapshot_encode_header(&h, raw);

	if (!EnsureSnapshotDir())
		return false;
	TvSnapshotPath(h.dboid, h.indexoid, path);
	snprintf(tmppath, sizeof(tmppath), "%s.tmp", path);

	fd = OpenTransientFile(tmppath, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmppath)));
		return false;
	}
	if (!WriteAll(fd, (const char *) raw, sizeof(raw)) ||
		!WriteAll(fd, stream, h.stream_bytes) ||
		!WriteAll(fd, (const char *) refines, h.refine_bytes))
	{
		DiscardTemp(fd, tmppath);
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", tmppath)));
		return false;
	}
	if (pg_fsync(fd) != 0)
	{
		DiscardTemp(fd, tmppath);
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", tmppath)));
		return false;
	}
	if (CloseTransientFile(fd) != 0)
	{
		DiscardTemp(-1, tmppath);
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", tmppath)));
		return false;
	}

	/* fsyncs the file, renames over the old one, fsyncs the directory */
	if (durable_rename(tmppath, path, WARNING) != 0)
	{
		DiscardTemp(-1, tmppath);
		return false;
	}
	*size = (Size) (TV_SNAPSHOT_HEADER_BYTES + h.stream_bytes + h.refine_bytes);
	return true;
}

/*
 * Read and validate the snapshot of expect's index.  A missing file returns
 * false with *why NULL; any other problem returns false with *why a palloc'd
 * reason for the caller's one WARNING.  The header is checked against the
 * file size before anything is allocated, so a hostile size never drives an
 * allocation; the body must end exactly at end of file.  On success the
 * stream and refines are palloc'd (huge) in CurrentMemoryContext.  With
 * stop, the body is read in pieces and stop is asked before each; when it
 * says so the read ends, returning false with *why NULL and *stopped set.
 */
bool
TvSnapshotRead(const TvSnapshotExpect *expect, TvSnapshotHeader *hdr,
			   char **stream, char **refines, const char **why,
			   TvSnapshotStopFunc stop, void *stop_arg, bool *stopped)
{
	char		path[MAXPGPATH];
	uint8		raw[TV_SNAPSHOT_HEADER_BYTES];
	TvSnapshotHeader h;
	struct stat st;
	int			fd = -1;
	int64		got;
	char	   *s = NULL;
	char	   *v = NULL;
	char		extra;
	const char *reason;

	*why = NULL;
	*stream = NULL;
	*refines = NULL;
	*stopped = false;
	UseServerCrc32c();
	TvSnapshotPath(expect->dboid, expect->indexoid, path);

	/* Only a plain file we wrote: no symlink, FIFO or directory */
	if (lstat(path, &st) != 0)
	{
		if (errno == ENOENT)
			return false;
		*why = psprintf("could not stat file: %m");
		return false;
	}
	if (!S_ISREG(st.st_mode))
	{
		*why = "not a regular file";
		return false;
	}

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return false;		/* removed since the lstat */
		*why = psprintf("could not open file: %m");
		return false;
	}
	if (fstat(fd, &st) != 0)
	{
		*why = psprintf("could not stat file: %m");
		goto fail;
	}

	got = ReadAll(fd, (char *) raw, Min((uint64) st.st_size, (uint64) sizeof(raw)));
	if (got < 0)
	{
		*why = psprintf("could not read file: %m");
		goto fail;
	}
	reason = tv_snapshot_parse_header(raw, (size_t) got, (uint64) st.st_size,
									  expect, &h);
	if (reason != NULL)
	{
		*why = pstrdup(reason);
		goto fail;
	}

	/* Sizes now match the file; they still must fit one huge allocation */
	if (h.stream_bytes + h.refine_bytes > (uint64) MaxAllocHugeSize)
	{
		*why = "too large to load";
		goto fail;
	}
	s = palloc_extended(Max((Size) h.stream_bytes, 1),
						MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	v = palloc_extended(Max((Size) h.refine_bytes, 1),
						MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (s == NULL || v == NULL)
	{
		*why = "out of memory";
		goto fail;
	}

	/* The file may have changed since fstat: insist on exactly the sizes */
	got = ReadStoppable(fd, s, h.stream_bytes, stop, stop_arg, stopped);
	if (got >= 0 && (uint64) got == h.stream_bytes)
		got = ReadStoppable(fd, v, h.refine_bytes, stop, stop_arg, stopped);
	else if (got >= 0 && !*stopped)
		got = -2;
	if (*stopped)
		goto fail;
	if (got == -1)
	{
		*why = psprintf("could not read file: %m");
		goto fail;
	}
	if (got == -2 || (uint64) got != h.refine_bytes)
	{
		*why = "truncated";
		goto fail;
	}
	got = ReadAll(fd, &extra, 1);
	if (got != 0)
	{
		*why = got < 0 ? psprintf("could not read file: %m") : "trailing bytes";
		goto fail;
	}
	CloseTransientFile(fd);
	fd = -1;

	reason = tv_snapshot_check_body(&h, (const uint8 *) s, (const uint8 *) v);
	if (reason != NULL)
	{
		*why = pstrdup(reason);
		goto fail;
	}

	*hdr = h;
	*stream = s;
	*refines = v;
	return true;

fail:
	if (fd >= 0)
		CloseTransientFile(fd);
	if (s != NULL)
		pfree(s);
	if (v != NULL)
		pfree(v);
	return false;
}

/* Remove the snapshot of (dboid, indexoid) and any leftover temp file */
void
TvSnapshotRemove(uint32 dboid, uint32 indexoid)
{
	char		path[MAXPGPATH];
	char		tmppath[MAXPGPATH];

	TvSnapshotPath(dboid, indexoid, path);
	snprintf(tmppath, sizeof(tmppath), "%s.tmp", path);
	if (unlink(path) != 0 && errno != ENOENT)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", path)));
	if (unlink(tmppath) != 0 && errno != ENOENT)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", tmppath)));
}

/*
 * Remove snapshot files nobody will load: with dboid valid, the files of
 * that database whose index is not in keep (all of them when keep_listed is
 * false); with dboid invalid, the files of databases not in keep.  Files
 * we did not name (no "<dboid>_<indexoid>.tv" shape) are left alone.
 */
void
TvSnapshotSweep(uint32 dboid, const List *keep, bool keep_listed)
{
	DIR		   *dir;
	struct dirent *de;

	dir = AllocateDir(TV_SNAPSHOT_DIR);
	if (dir == NULL)
		return;					/* no directory: nothing to sweep */
	while ((de = ReadDirExtended(dir, TV_SNAPSHOT_DIR, LOG)) != NULL)
	{
		unsigned int fdb;
		unsigned int fidx;
		char		tail[8];
		bool		drop;

		if (sscanf(de->d_name, "%u_%u%7s", &fdb, &fidx, tail) != 3)
			continue;
		if (strcmp(tail, ".tv") != 0 && strcmp(tail, ".tv.tmp") != 0)
			continue;
		if (OidIsValid(dboid))
			drop = (fdb == dboid) &&
				(!keep_listed || !list_member_oid(keep, fidx) || strcmp(tail, ".tv.tmp") == 0);
		else
			drop = !list_member_oid(keep, fdb);
		if (drop)
		{
			char		path[MAXPGPATH];

			snprintf(path, sizeof(path), "%s/%s", TV_SNAPSHOT_DIR, de->d_name);
			if (unlink(path) != 0 && errno != ENOENT)
				ereport(LOG,
						(errcode_for_file_access(),
						 errmsg("could not remove turbovec snapshot \"%s\": %m", path)));
		}
	}
	FreeDir(dir);
}
