# htsgetr on AWS Lambda: a ticket function and a data function behind one API Gateway HTTP
# API ($default stage, payload 2.0), reading one S3 bucket prefix. Tickets carry presigned
# S3 urls (signed with the ticket function's role), so clients read the bucket directly; the
# data function serves what must come through htsgetr (proxied locations, re-cut blocks).

data "aws_region" "current" {}

locals {
  bucket_arn = "arn:aws:s3:::${var.bucket_name}"
  # one S3 location, its region named so that presigning needs no HeadBucket (which the
  # prefix-limited s3:ListBucket below does not allow)
  generated_config = <<-EOT
    [[locations]]
    storage = "s3://${var.bucket_name}/${var.data_prefix}"
    region = "${data.aws_region.current.name}"
  EOT
  # a file bundled in the zip wins; else the text of var.config_toml or the generated one
  config_environment = lookup(
    { "" = { HTSGET_CONFIG_TOML = coalesce(var.config_toml, local.generated_config) } },
    var.config_file, { HTSGET_CONFIG = var.config_file },
  )
  functions = {
    ticket = "htsgetr.aws_lambda.ticket_handler"
    data   = "htsgetr.aws_lambda.data_handler"
  }
  routes = [
    "GET /service-info",
    "GET /reads/{proxy+}",
    "POST /reads/{proxy+}",
    "GET /variants/{proxy+}",
    "POST /variants/{proxy+}",
    "GET /sequences/{proxy+}",
    "POST /sequences/{proxy+}",
  ]
}

# --------------------------------------------------------------------------- the bucket

resource "aws_s3_bucket" "data" {
  count  = var.create_bucket ? 1 : 0
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "data" {
  count                   = var.create_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.data[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "data" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

# browsers read presigned urls cross-origin with a Range header
resource "aws_s3_bucket_cors_configuration" "data" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  cors_rule {
    allowed_methods = ["GET", "HEAD"]
    allowed_origins = var.cors_allow_origins
    allowed_headers = ["Range"]
    expose_headers  = ["Content-Length", "Content-Range", "ETag"]
    max_age_seconds = 3600
  }
}

# --------------------------------------------------------------------------- IAM: read-only, one prefix

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "function" {
  for_each = local.functions

  # the objects below the prefix, read only (presigned urls carry this permission)
  statement {
    sid       = "ReadData"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/${var.data_prefix}*"]
  }
  # listings, only below the prefix (htsgetr lists to learn many objects' sizes at once)
  statement {
    sid       = "ListDataPrefix"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.data_prefix}*"]
    }
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
  }
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "${var.name}-${each.key}-read"
  role     = aws_iam_role.function[each.key].id
  policy   = data.aws_iam_policy_document.function[each.key].json
}

# --------------------------------------------------------------------------- the functions

resource "aws_cloudwatch_log_group" "function" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "function" {
  for_each         = local.functions
  function_name    = "${var.name}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  handler          = each.value
  runtime          = "python3.11"
  architectures    = ["x86_64"]
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  memory_size      = var.memory_size
  timeout          = var.timeout
  tags             = var.tags

  environment {
    variables = merge(
      { HTSGET_BASE_URL = aws_apigatewayv2_api.this.api_endpoint },
      local.config_environment,
      lookup({ "" = {} }, var.data_url_secret, { HTSGET_DATA_URL_SECRET = var.data_url_secret }),
      var.environment,
    )
  }

  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.function]
}

# --------------------------------------------------------------------------- the HTTP API

resource "aws_apigatewayv2_api" "this" {
  name          = var.name
  protocol_type = "HTTP"
  tags          = var.tags

  cors_configuration {
    allow_origins  = var.cors_allow_origins
    allow_methods  = ["GET", "POST", "OPTIONS"]
    allow_headers  = ["Authorization", "Content-Type", "Range"]
    expose_headers = ["Content-Length", "Content-Range"]
    max_age        = 3600
  }
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.this.id
  name        = "$default"
  auto_deploy = true
  tags        = var.tags
}

resource "aws_apigatewayv2_integration" "function" {
  for_each               = local.functions
  api_id                 = aws_apigatewayv2_api.this.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.function[each.key].invoke_arn
  payload_format_version = "2.0"
}

resource "aws_apigatewayv2_route" "ticket" {
  for_each  = toset(local.routes)
  api_id    = aws_apigatewayv2_api.this.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.function["ticket"].id}"
}

resource "aws_apigatewayv2_route" "data" {
  api_id    = aws_apigatewayv2_api.this.id
  route_key = "GET /data/{proxy+}"
  target    = "integrations/${aws_apigatewayv2_integration.function["data"].id}"
}

resource "aws_lambda_permission" "api" {
  for_each      = local.functions
  statement_id  = "AllowApiGateway"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.function[each.key].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.this.execution_arn}/*/*"
}
