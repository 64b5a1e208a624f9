variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "htsgetr"
}

variable "lambda_zip" {
  description = "The deployment package `make lambda-zip` builds (build/htsgetr-lambda.zip)."
  type        = string
  default     = "../../build/htsgetr-lambda.zip"
}

variable "bucket_name" {
  description = "The S3 bucket the data lives in."
  type        = string
}

variable "create_bucket" {
  description = "Create the bucket (private, encrypted, versioned); false: use an existing one."
  type        = bool
  default     = true
}

variable "data_prefix" {
  description = "Key prefix of the data inside the bucket (IDs are keys below it, without the format's extension). The functions may read only below it."
  type        = string
  default     = "data/"
}

variable "config_toml" {
  description = "The functions' configuration, TOML text (HTSGET_CONFIG_TOML; paths in it absolute). Empty: one S3 location, s3://bucket_name/data_prefix in this region. Lambda allows 4 KB of environment in all."
  type        = string
  default     = ""
}

variable "config_file" {
  description = "Instead of config_toml: a configuration file bundled in the zip (HTSGET_CONFIG, relative to the code directory; `make lambda-zip LAMBDA_CONFIG=file` bundles one as htsgetr.toml)."
  type        = string
  default     = ""
}

variable "environment" {
  description = "More HTSGET_* (or AWS_*) variables for both functions, e.g. { HTSGET_LOGGING_FORMAT = \"json\" }."
  type        = map(string)
  default     = {}
}

variable "data_url_secret" {
  description = "HTSGET_DATA_URL_SECRET: required when the configuration turns [auth] on (the ticket function signs /data urls, the data function checks them)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "memory_size" {
  description = "MB per function (CPU is proportional): indexes are parsed in memory."
  type        = number
  default     = 1024
}

variable "timeout" {
  description = "Seconds per invocation (API Gateway HTTP APIs wait at most 30)."
  type        = number
  default     = 29
}

variable "cors_allow_origins" {
  description = "Origins allowed to call the API from a browser (igv.js)."
  type        = list(string)
  default     = ["*"]
}

variable "log_retention_days" {
  description = "Days the functions' CloudWatch logs are kept."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
