module example.com/kai-mini

go 1.24.4

require github.com/google/uuid v1.6.0
