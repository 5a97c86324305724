# Requests gatehouse_bundle.policy decides at plan time against the objects
# it is about to publish (checks.tf asserts on the results). Each is a
# request as a policy test gives it: the caller (an identity, or an
# identity_provider and subject, with groups and claims), the resource, and
# sql or request.
decisions = {
  billing_drop = {
    identity = "billing-service"
    resource = "orders"
    sql      = "/* tidy up */ DROP TABLE customers"
  }
  analytics_read = {
    identity = "analytics-job"
    subject  = "analytics-nightly"
    claims   = "{\"env\":\"prod\"}"
    resource = "orders"
    sql      = "SELECT email, card_number FROM customers"
  }
}
