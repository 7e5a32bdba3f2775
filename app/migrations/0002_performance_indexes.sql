-- phase: expand
-- transaction: none
-- summary: the performance indexes (lookups by email, recency, foreign keys, status and the
--          composite rate-limit index), built without blocking writes.
--
-- CREATE INDEX CONCURRENTLY cannot run inside a transaction: the runner runs these statements
-- one by one. An interrupted build leaves an INVALID index behind; `IF NOT EXISTS` would then
-- skip it, so the runner drops every INVALID index named here and builds it again.

-- Users: login by email (unique), newest members, filters by status.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_users_email ON users (email);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_users_created_at ON users (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_users_status ON users (status);

-- Profiles: recently edited profiles.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_profiles_updated_at ON profiles (updated_at);

-- Subscriptions: the dashboard's active subscriptions of a user (covers the user_id foreign
-- key), admin counts by status, and the plan foreign key.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_subscriptions_user_status
    ON subscriptions (user_id, status);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_subscriptions_status ON subscriptions (status);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_subscriptions_plan_code ON subscriptions (plan_code);

-- API tokens: the dashboard's unexpired tokens of a user (covers the user_id foreign key) and
-- expiry sweeps.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_api_tokens_user_expires
    ON api_tokens (user_id, expires_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_api_tokens_expires_at ON api_tokens (expires_at);

-- Activity log: a user's latest activity (covers the user_id foreign key), recent activity.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_activity_log_user_created
    ON activity_log (user_id, created_at DESC);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_activity_log_created_at ON activity_log (created_at);

-- Rate limits: the composite lookup of a user's counter for an endpoint and window.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_rate_limits_user_endpoint_window
    ON rate_limits (user_id, endpoint, window_start);
