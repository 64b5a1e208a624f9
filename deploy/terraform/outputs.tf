output "api_endpoint" {
  description = "The htsget base url: <api_endpoint>/reads/<id>, <api_endpoint>/variants/<id>."
  value       = aws_apigatewayv2_api.this.api_endpoint
}

output "function_names" {
  description = "The ticket and data functions."
  value       = { for k, f in aws_lambda_function.function : k => f.function_name }
}

output "bucket" {
  description = "The data bucket and the prefix the functions may read."
  value       = { name = var.bucket_name, prefix = var.data_prefix }
}
