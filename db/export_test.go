package db

// EncodeAnnotations is encodeAnnotations, for TestEncodeAnnotations, which
// needs a database and so lives in package db_test.
var EncodeAnnotations = encodeAnnotations
