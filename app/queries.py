"""Every SQL statement the service runs. Each builds its JSON answer in Postgres, in one round trip.

User values are always bound parameters; nothing here is assembled from request data.
"""

from __future__ import annotations

from app.db import Query

_USER_JSON = """json_build_object(
    'id', u.id, 'email', u.email, 'name', u.name, 'role', u.role, 'status', u.status,
    'createdAt', u.created_at, 'updatedAt', u.updated_at)"""

_DASHBOARD_BODY = """
SELECT json_build_object(
    'user', json_build_object(
        'id', u.id, 'email', u.email, 'name', u.name, 'role', u.role, 'status', u.status,
        'createdAt', u.created_at, 'updatedAt', u.updated_at),
    'profile', (
        SELECT json_build_object(
            'bio', p.bio, 'avatarUrl', p.avatar_url, 'company', p.company,
            'location', p.location, 'timezone', p.timezone, 'locale', p.locale,
            'updatedAt', p.updated_at)
        FROM profiles p WHERE p.user_id = u.id),
    'subscriptions', COALESCE((
        SELECT json_agg(json_build_object(
            'id', s.id, 'plan', s.plan_code, 'planName', pl.name,
            'monthlyPriceCents', pl.monthly_price_cents, 'status', s.status,
            'currentPeriodStart', s.current_period_start,
            'currentPeriodEnd', s.current_period_end) ORDER BY s.current_period_end DESC)
        FROM subscriptions s JOIN plans pl ON pl.code = s.plan_code
        WHERE s.user_id = u.id AND s.status IN ('active', 'past_due')), '[]'::json),
    'apiTokens', COALESCE((
        SELECT json_agg(json_build_object(
            'id', t.id, 'name', t.name, 'prefix', t.token_prefix, 'scopes', t.scopes,
            'expiresAt', t.expires_at, 'lastUsedAt', t.last_used_at) ORDER BY t.expires_at)
        FROM api_tokens t
        WHERE t.user_id = u.id AND t.expires_at > now() AND t.revoked_at IS NULL), '[]'::json)
)::text
FROM users u"""

DASHBOARD = Query(
    "user_dashboard",
    _DASHBOARD_BODY + "\nWHERE u.id = %s",
    "select",
    "users",
)

DASHBOARD_WITH_SLEEP = Query(
    "user_dashboard_with_fault_sleep",
    _DASHBOARD_BODY + "\nCROSS JOIN LATERAL (SELECT pg_sleep(%s)) AS fault_injected"
    "\nWHERE u.id = %s",
    "select",
    "users",
)
"""The dashboard with the ``PORTAL_FAULT_DB_SLEEP_MS`` drill's sleep in the same statement."""

USERS_PAGE = Query(
    "users_page",
    """
WITH total AS (SELECT count(*) AS n FROM users)
SELECT json_build_object(
    'items', COALESCE((
        SELECT json_agg(json_build_object(
            'id', u.id, 'email', u.email, 'name', u.name, 'role', u.role,
            'status', u.status, 'createdAt', u.created_at) ORDER BY u.id)
        FROM (SELECT id, email, name, role, status, created_at FROM users
              ORDER BY id LIMIT %(limit)s OFFSET %(offset)s) u), '[]'::json),
    'page', %(page)s::int,
    'perPage', %(limit)s::int,
    'total', total.n,
    'pages', (total.n + %(limit)s::int - 1) / %(limit)s::int
)::text
FROM total""",
    "select",
    "users",
)

USER = Query(
    "user",
    f"SELECT {_USER_JSON}::text FROM users u WHERE u.id = %s",
    "select",
    "users",
)

UPDATE_USER = Query(
    "update_user",
    f"""
WITH u AS (
    UPDATE users SET
        name = COALESCE(%(name)s, name),
        email = COALESCE(%(email)s, email),
        status = COALESCE(%(status)s, status),
        updated_at = now()
    WHERE id = %(id)s
    RETURNING id, email, name, role, status, created_at, updated_at
), logged AS (
    INSERT INTO activity_log (user_id, action, details)
    SELECT u.id, 'user.updated', %(details)s::jsonb FROM u
)
SELECT {_USER_JSON}::text FROM u""",
    "update",
    "users",
)

USER_ACTIVITY = Query(
    "user_activity",
    """
SELECT CASE WHEN EXISTS (SELECT 1 FROM users WHERE id = %(id)s) THEN COALESCE((
    SELECT json_agg(json_build_object(
        'id', a.id, 'action', a.action, 'details', a.details,
        'ipAddress', host(a.ip_address), 'createdAt', a.created_at) ORDER BY a.created_at DESC)
    FROM (SELECT id, action, details, ip_address, created_at FROM activity_log
          WHERE user_id = %(id)s ORDER BY created_at DESC LIMIT %(limit)s) a), '[]'::json)
END::text""",
    "select",
    "activity_log",
)

ADMIN_STATS = Query(
    "admin_stats",
    """
WITH us AS (SELECT status, count(*) AS n FROM users GROUP BY status),
     ss AS (SELECT status, count(*) AS n FROM subscriptions GROUP BY status),
     ap AS (SELECT plan_code, count(*) AS n FROM subscriptions
            WHERE status IN ('active', 'past_due') GROUP BY plan_code)
SELECT json_build_object(
    'users', json_build_object(
        'total', (SELECT COALESCE(sum(n), 0) FROM us),
        'byStatus', (SELECT COALESCE(json_object_agg(status, n), '{}'::json) FROM us),
        'newLast7Days', (SELECT count(*) FROM users
                         WHERE created_at > now() - interval '7 days')),
    'subscriptions', json_build_object(
        'byStatus', (SELECT COALESCE(json_object_agg(status, n), '{}'::json) FROM ss),
        'activeByPlan', (SELECT COALESCE(json_object_agg(plan_code, n), '{}'::json) FROM ap),
        'monthlyRecurringRevenueCents', (
            SELECT COALESCE(sum(pl.monthly_price_cents), 0)
            FROM subscriptions s JOIN plans pl ON pl.code = s.plan_code
            WHERE s.status = 'active')),
    'apiTokens', json_build_object(
        'active', (SELECT count(*) FROM api_tokens
                   WHERE expires_at > now() AND revoked_at IS NULL),
        'expired', (SELECT count(*) FROM api_tokens WHERE expires_at <= now())),
    'activity', json_build_object(
        'last24Hours', (SELECT count(*) FROM activity_log
                        WHERE created_at > now() - interval '24 hours')),
    'generatedAt', now()
)::text""",
    "select",
    "users",
)

PLANS = Query(
    "plans",
    """
SELECT COALESCE(json_agg(json_build_object(
    'code', code, 'name', name, 'monthlyPriceCents', monthly_price_cents)
    ORDER BY monthly_price_cents, code), '[]'::json)::text
FROM plans""",
    "select",
    "plans",
)
