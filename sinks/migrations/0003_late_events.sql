-- Events beyond the allowed lateness are stored but counted in no KPI window:
-- the stream flags them (PRODUCT.md, KPI semantics).
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS late UInt8 DEFAULT 0 COMMENT '1: beyond the allowed lateness, in no KPI window';
