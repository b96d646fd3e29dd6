--
-- Topic registry: naming convention <env>.<domain>.<entity>.v<version>,
-- Kafka's rules, registration.  (Creation on the broker: TAP 022.)
--
CREATE EXTENSION infra;

SHOW infra.environment;
SELECT infra.topic_name('billing', 'invoice');
SELECT infra.topic_name('billing', 'invoice', 3, 'prod');
SELECT * FROM infra.topic_parse('staging.crm.customer-profile.v12');
SELECT infra.topic_validate('prod.shop.order_line.v1');

-- Each rule, with its own message.
SELECT infra.topic_validate('');
SELECT infra.topic_validate('.');
SELECT infra.topic_validate(repeat('a', 250));
SELECT infra.topic_validate('dev.shop.order line.v1');
SELECT infra.topic_validate('dev.shop.order');
SELECT infra.topic_validate('qa.shop.order.v1');
SELECT infra.topic_validate('dev.Shop.order.v1');
SELECT infra.topic_validate('dev.shop.order.1');
SELECT infra.topic_validate('dev.shop.order.v0');
SELECT infra.topic_name('billing', 'invoice', 0);
SELECT infra.topic_name('billing', NULL);
SELECT infra.topic_name('billing', 'invoice', 1, 'test');
SELECT * FROM infra.topic_parse('orders');

-- Registration: the row, its parts, pending until the worker creates it.
SELECT infra.topic_register('billing', 'invoice', partitions => 3,
                            config => '{"retention.ms": "86400000"}',
                            description => 'Invoices issued');
SELECT name, env, domain, entity, version, partitions, replication_factor, config,
       description, broker_state
  FROM infra.topics;
SELECT infra.topic_exists('dev.billing.invoice.v1'), infra.topic_exists('dev.billing.invoice.v2');
SELECT infra.topic_register('billing', 'invoice');
SELECT infra.topic_register('billing', 'invoice', 2, partitions => 0);
SELECT infra.topic_register('billing', 'invoice', 2, replication_factor => 99);
INSERT INTO infra.topics (name, env, domain, entity, version) VALUES ('bad name', 'dev', 'x', 'y', 1);
-- Listing and filtering is plain SQL.
SELECT infra.topic_register('billing', 'invoice', 2);
SELECT infra.topic_register('crm', 'customer', env => 'prod');
SELECT name FROM infra.topics WHERE domain = 'billing' ORDER BY version;
SELECT name FROM infra.topics WHERE env = 'prod';
SELECT infra.topic_drop('dev.billing.invoice.v2'), infra.topic_drop('dev.billing.invoice.v2');

-- Privileges: everyone may read and name; registering needs a grant.
CREATE ROLE topics_app;
SET ROLE topics_app;
SELECT infra.topic_name('a', 'b');
SELECT count(*) FROM infra.topics;
SELECT infra.topic_register('a', 'b');
SELECT infra.topic_drop('dev.billing.invoice.v1');
RESET ROLE;
DROP ROLE topics_app;

DROP EXTENSION infra;
