package fluent

const Version = "1.9.0"
