"""Normalized write model: customers, products, stock, orders, order items, outbox, idempotency keys.

Revision ID: 0001
Revises:
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
create table customers (
    customer_id  text primary key,
    name         text not null check (length(name) between 1 and 200),
    email        text not null check (email = lower(email)),
    version      integer not null check (version >= 1),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create unique index customers_email_key on customers (email);

create table products (
    product_id   text primary key,
    name         text not null check (length(name) >= 1),
    category     text not null check (length(category) >= 1),
    subcategory  text,
    description  text not null default '',
    tags         text[] not null default '{}',
    price        numeric(12, 2) not null check (price > 0),
    image_url    text,
    version      integer not null check (version >= 1),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index products_category_idx on products (category);

create table stock (
    product_id   text primary key references products (product_id),
    available    integer not null check (available >= 0),
    updated_at   timestamptz not null default now()
);

create table orders (
    order_id     text primary key,
    customer_id  text not null references customers (customer_id),
    status       text not null check (status in ('pending', 'shipped', 'delivered', 'cancelled')),
    total        numeric(12, 2) not null check (total >= 0),
    version      integer not null check (version >= 1),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index orders_customer_created_idx on orders (customer_id, created_at desc);

create table order_items (
    order_id     text not null references orders (order_id),
    product_id   text not null references products (product_id),
    line_no      integer not null,
    quantity     integer not null check (quantity > 0),
    unit_price   numeric(12, 2) not null check (unit_price > 0),
    primary key (order_id, product_id)
);

-- Events waiting for (or already given to) the broker. `id` orders rows of one aggregate in
-- commit order because a command locks its aggregates before inserting their events.
create table outbox (
    id               bigserial primary key,
    event_id         uuid not null unique,
    topic            text not null,
    aggregate_type   text not null,
    aggregate_id     text not null,
    sequence_number  bigint not null,
    event_type       text not null,
    payload          bytea not null,
    headers          jsonb not null default '{}',
    created_at       timestamptz not null default clock_timestamp(),
    published_at     timestamptz,
    unique (aggregate_type, aggregate_id, sequence_number)
);
create index outbox_unpublished_idx on outbox (id) where published_at is null;
create index outbox_published_idx on outbox (published_at) where published_at is not null;

-- Wake the relay when events commit (notifications are delivered at commit, and collapse).
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end $$;
create trigger outbox_notify after insert on outbox for each statement execute function outbox_notify();

create table idempotency_keys (
    key            text primary key,
    request_hash   text not null,
    status_code    integer not null,
    response       jsonb not null,
    created_at     timestamptz not null default now()
);
create index idempotency_keys_created_idx on idempotency_keys (created_at);
"""

DOWNGRADE = """
drop table if exists idempotency_keys, outbox, order_items, orders, stock, products, customers;
drop function if exists outbox_notify();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
