from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("json/", views.json_view, name="json"),
    path("form/", views.form),
    path("upload/", views.upload),
    path("go/", views.go),
    path("boom/", views.boom),
]
