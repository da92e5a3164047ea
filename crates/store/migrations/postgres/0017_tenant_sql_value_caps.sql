-- Tenant SQL: values a query builds stay small (issue 13).
--
-- PostgreSQL checks for cancellation between rows, not while it evaluates
-- one row's expression, and values may reach 1 GB. So one row of a tenant's
-- query could chain hundreds of steps on huge values (a 131 000-digit `%`,
-- a 500 MB `||`) and run or hold gigabytes long past its time limit. The
-- operators below take the place of PostgreSQL's own for tenant queries
-- (their reader connections search `keyflow_tenant` before `pg_catalog`,
-- and same-signature names found first win): they do the same work, but
-- refuse to build text or JSON over 256 KiB or to compute on numbers over
-- 4 KiB (about 8 000 digits). Cheap size checks only: no value is read to
-- check it. (string_agg, which grows a value row by row, is not offered on
-- PostgreSQL: a capped version written in SQL copied its text at each row.)

CREATE FUNCTION keyflow_tenant.value_too_big(size BIGINT, sample ANYELEMENT)
    RETURNS ANYELEMENT LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RAISE EXCEPTION 'a value of % bytes is over what a tenant query may build (text and JSON: 256 KiB; numbers: 4 KiB)', size
        USING ERRCODE = 'program_limit_exceeded';
END $$;

CREATE FUNCTION keyflow_tenant.textcat(a TEXT, b TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL OR b IS NULL THEN NULL
        WHEN pg_catalog.octet_length(a)::BIGINT OPERATOR(pg_catalog.+) pg_catalog.octet_length(b) OPERATOR(pg_catalog.<=) 262144
            THEN pg_catalog.textcat(a, b)
        ELSE keyflow_tenant.value_too_big(pg_catalog.octet_length(a)::BIGINT OPERATOR(pg_catalog.+) pg_catalog.octet_length(b), a)
    END
$$;

CREATE FUNCTION keyflow_tenant.textanycat(a TEXT, b ANYNONARRAY) RETURNS TEXT
    LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT keyflow_tenant.textcat(a, b::pg_catalog.text) $$;

CREATE FUNCTION keyflow_tenant.anytextcat(a ANYNONARRAY, b TEXT) RETURNS TEXT
    LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT keyflow_tenant.textcat(a::pg_catalog.text, b) $$;

CREATE FUNCTION keyflow_tenant.jsonbcat(a JSONB, b JSONB) RETURNS JSONB
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL OR b IS NULL THEN NULL
        WHEN pg_catalog.pg_column_size(a)::BIGINT OPERATOR(pg_catalog.+) pg_catalog.pg_column_size(b) OPERATOR(pg_catalog.<=) 262144
            THEN pg_catalog.jsonb_concat(a, b)
        ELSE keyflow_tenant.value_too_big(pg_catalog.pg_column_size(a)::BIGINT OPERATOR(pg_catalog.+) pg_catalog.pg_column_size(b), a)
    END
$$;

CREATE OPERATOR keyflow_tenant.|| (LEFTARG = TEXT, RIGHTARG = TEXT, FUNCTION = keyflow_tenant.textcat);
CREATE OPERATOR keyflow_tenant.|| (LEFTARG = TEXT, RIGHTARG = ANYNONARRAY, FUNCTION = keyflow_tenant.textanycat);
CREATE OPERATOR keyflow_tenant.|| (LEFTARG = ANYNONARRAY, RIGHTARG = TEXT, FUNCTION = keyflow_tenant.anytextcat);
CREATE OPERATOR keyflow_tenant.|| (LEFTARG = JSONB, RIGHTARG = JSONB, FUNCTION = keyflow_tenant.jsonbcat);

-- Numbers: +, -, *, / and % on operands of at most 4 KiB together.
DO $$
DECLARE
    op RECORD;
BEGIN
    FOR op IN SELECT * FROM (VALUES ('+', 'numeric_add'), ('-', 'numeric_sub'), ('*', 'numeric_mul'),
                                    ('/', 'numeric_div'), ('%', 'numeric_mod')) AS o(symbol, fn)
    LOOP
        EXECUTE format($f$
            CREATE FUNCTION keyflow_tenant.%1$I(a NUMERIC, b NUMERIC) RETURNS NUMERIC
                LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $body$
                SELECT CASE
                    WHEN a IS NULL OR b IS NULL THEN NULL
                    WHEN pg_catalog.pg_column_size(a) OPERATOR(pg_catalog.+) pg_catalog.pg_column_size(b) OPERATOR(pg_catalog.<=) 4096
                        THEN pg_catalog.%1$I(a, b)
                    ELSE keyflow_tenant.value_too_big((pg_catalog.pg_column_size(a) OPERATOR(pg_catalog.+) pg_catalog.pg_column_size(b))::BIGINT, a)
                END
            $body$
        $f$, op.fn);
        EXECUTE format('CREATE OPERATOR keyflow_tenant.%s (LEFTARG = NUMERIC, RIGHTARG = NUMERIC, FUNCTION = keyflow_tenant.%I)',
                       op.symbol, op.fn);
    END LOOP;
END $$;
