-- apalis-postgres's first migration made `unique_job_id` (a second unique index on the
-- primary key `id`) and `lidx` (on lock_by); its later one made `idx_apalis_jobs_lock_by`
-- beside `lidx` without dropping it. Every job's insert and each of its status changes
-- (none is a HOT update: status is indexed) wrote all four, two of them for nothing.
-- apalis's own migrations create and drop indexes with IF [NOT] EXISTS, so none of them
-- breaks on these being gone.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
