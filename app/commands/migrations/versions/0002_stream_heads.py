"""Published heads: how far the relay has written each partition of each topic.

The relay raises a partition's head in the same statement that marks its rows published, so a head
is never behind what the relay has acknowledged as published. The query API follows the table
(LISTEN stream_heads) to tell whether a view had applied everything its partition held.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
create table stream_heads (
    topic        text not null,
    partition    integer not null check (partition >= 0),
    next_offset  bigint not null check (next_offset >= 0),
    updated_at   timestamptz not null default clock_timestamp(),
    primary key (topic, partition)
);

create function stream_heads_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('stream_heads', '');
    return null;
end $$;
create trigger stream_heads_notify after insert or update or delete on stream_heads
    for each statement execute function stream_heads_notify();
"""

DOWNGRADE = """
drop table if exists stream_heads;
drop function if exists stream_heads_notify();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
